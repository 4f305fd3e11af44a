/* bf16 compute for y = x @ W of a quantized weight (rows layout, fastdl/quant.py):
 * x rounded to bfloat16, the weight units as bfloat16, products summed in float32
 * with AVX512-BF16's vdpbf16ps, scaled in float32.  _qbf16.pyx runs the kernels.
 *
 * Arithmetic (one definition; the scalar emulation fdl_qb_table(0) is it, the
 * AVX512-BF16 kernels fdl_qb_table(1) give bitwise the same results):
 *
 * - xb = bf16(x), round to nearest even; a bf16 below 2^-126 in magnitude counts
 *   as 0 (vdpbf16ps treats denormal inputs as zero).  Units: int8 q, code -
 *   2^(bits-1) (exact in bf16), NF4 codebook entries rounded to nearest-even bf16.
 * - A column is cut in "steps" of 64 values.  4-bit: quad s = groups 2s and 2s+1
 *   (an odd last group is a quad whose second group has zero x and zero scale);
 *   step 2s+a holds half a (values 32a..32a+31) of both groups.  int8: step k
 *   holds values 64k..64k+63.  A step is two vectors of 32 bf16 (the storage
 *   bytes read as 16-bit words, nibble a and a+2 of each word, see qb_xperm);
 *   lanes 0-7 of a step see one 32-value half (of one block), lanes 8-15 another.
 * - Per step k, 16 float32 lanes: A = dp(dp(0, X0, W0), X1, W1) with
 *   dp(acc, a, b)[l] = (acc[l] + a[2l+1] b[2l+1]) + a[2l] b[2l] (each product exact,
 *   each sum rounded to nearest even, denormal results flushed to zero: vdpbf16ps
 *   as the Intel SDM defines it), then T_{k&1} = fma(A, S_k, T_{k&1}) with S_k the
 *   scale of each lane's half (float32, one rounding).  "Merged" (4-bit rows whose
 *   64-value groups each lie in one block: block size a multiple of 64, one block,
 *   or per tensor): the two steps of quad s share one A (dp chain of 4 vectors, from
 *   0) and one fma, into T_{s&1}.  The column's main sum is tree(T0 + T1): lanes
 *   l + 8, then l + 4, l + 2, l + 1 added.
 * - The tail (the short last group of a 4-bit row, d_in % 64 values of an int8
 *   row) runs in order: acc = acc + xb*unit (same flushes), at each block end
 *   t = fma(acc, scale, t).  y = main + t.
 *
 * Every (row, column) is computed alone, so no result depends on the thread count
 * or on n (row i of a call with n rows equals the call with that row alone). */
#ifndef FASTDL_QBF16K_H
#define FASTDL_QBF16K_H
#include <stdint.h>
#include "quantk.h"
#include "simd.h"

#define FDL_QB_COLS 4

/* the NF4 codebook (float32, 16 entries) to round into the bf16 unit table; once */
void fdl_qb_init(const float *nf4_codebook);
/* 1 when the CPU has AVX512-BF16 (and AVX-512 F/BW/VL/DQ) */
int fdl_qb_cpu_bf16(void);
uint16_t fdl_qb_bf16(float v);
/* the bf16 unit tables (0: NF4, 2..4: bits), entry i = unit of code i & 15 */
extern uint16_t fdl_qb_units[5][32];

/* 1 when the steps of a quad share one sum (see above) */
int fdl_qb_merged(const fdl_qk_desc *q);
/* steps per column (see above) and the float32 lane scales per column (2 a step) */
int64_t fdl_qb_steps(const fdl_qk_desc *q);
/* x row (d_in floats) -> xp: 64 bf16 per step in the kernels' lane order */
void fdl_qb_xperm(const fdl_qk_desc *q, const float *x, uint16_t *xp);
/* lb[2k], lb[2k+1]: the blocks of lanes 0-7 and 8-15 of step k (nb: the missing
 * group of an odd quad, whose scale slot holds 0) */
void fdl_qb_lane_blocks(const fdl_qk_desc *q, int32_t *lb);
/* bsc[0..nb]: the block scales of column j (float32, as qk_scale decodes them), then 0 */
void fdl_qb_block_scales(const fdl_qk_desc *q, int64_t j, float *bsc);
/* the tail sum t of column j (0 when the row has no tail) */
float fdl_qb_tail(const fdl_qk_desc *q, int64_t j, const float *x);

typedef struct {
    /* n = 1, fused: main sums of columns j0..j0+jn-1 (jn 1..FDL_QB_COLS); lane c's
     * scale of step k: bsc[c * ldb + lb[2k + (lanes 8-15)]] */
    void (*main_cols)(const fdl_qk_desc *q, const uint16_t *xp, int64_t j0, int jn,
                      const int32_t *lb, const float *bsc, int64_t ldb, float *res);
    /* n >= 2: column j's units, 64 bf16 per step in lane order -> wb */
    void (*decode_col)(const fdl_qk_desc *q, int64_t j, uint16_t *wb);
    /* n >= 2: main sums of jn decoded columns (wb, ldw apart) against one xp */
    void (*main_dec)(const uint16_t *wb, int64_t ldw, int jn, int64_t nsteps, int merged,
                     const uint16_t *xp, const int32_t *lb, const float *bsc, int64_t ldb,
                     float *res);
} fdl_qb_kernels;

/* 0: the scalar emulation; 1: AVX512-BF16 (call only when fdl_qb_cpu_bf16()) */
const fdl_qb_kernels *fdl_qb_table(int bf16);

/* drivers (serial; _qbf16.pyx runs them over column groups) */
/* n = 1: y[j0..j1) (j1 - j0 <= FDL_QB_COLS); lb from fdl_qb_lane_blocks; bsc:
 * FDL_QB_COLS * (nb + 1) floats of scratch */
void fdl_qb_cols1(const fdl_qb_kernels *K, const fdl_qk_desc *q, const float *x,
                  const uint16_t *xp, int64_t j0, int64_t j1, const int32_t *lb, float *bsc,
                  float *y);
/* n rows: y (n, d_out); xps: n rows of xp (64 * steps apart); wb: FDL_QB_COLS * 64 *
 * steps bf16 of scratch; lb, bsc as above */
void fdl_qb_colsn(const fdl_qb_kernels *K, const fdl_qk_desc *q, const float *x, int64_t n,
                  const uint16_t *xps, int64_t j0, int64_t j1, uint16_t *wb, const int32_t *lb,
                  float *bsc, float *y);

#if FDL_HAVE_AVX2_TARGET
extern const fdl_qb_kernels fdl_qb_kernels_avx512bf16;
#endif
#endif
