/* Quantization kernels (quantize, dequantize, fused dequantize-matmul) for
 * _quant.pyx; storage format and arithmetic in fastdl/quant.py.
 *
 * The kernels of one SIMD level come in a table, fdl_qk_table(level), fetched
 * once per call; the AVX2/FMA and AVX-512 overrides (FDL_TARGET_AVX2 /
 * FDL_TARGET_AVX512, never -march=native; quantk_avx2.c, quantk_avx512.c) and
 * their scalar twins give bitwise the same results:
 *
 * - quantize / dequantize / panel decoding are elementwise float32 operations
 *   (division, trunc/floor, compare, one multiply): identical by IEEE.
 * - qmatmul small path, transpose=False, n = 1 (factored): per column the dot
 *   product is defined in 8 lanes.  The "fast" part of a column is its whole
 *   32-value halves (4-bit: both halves of every full 64-group; int8: every full
 *   run of 32 values), usable when the block size is a multiple of 32 or
 *   per-tensor.  Four lane accumulators A[v] (v = vector 0..3 of the half) take
 *   A[v] = fma(x, unit, A[v]); at the end of each block (and at the end of the
 *   fast part) c = (A0 + A1) + (A2 + A3), T = fma(c, scale, T), A = 0.  The
 *   result is ((T0+T4)+(T2+T6)) + ((T1+T5)+(T3+T7)) plus the scalar "tail"
 *   (the remaining values, or the whole column for other block sizes):
 *   acc = acc + x*unit per block, tot = tot + acc*scale at each block end.
 * - qmatmul small path, transpose=False, n >= 2 (values): the column's float32
 *   values v = s*unit (exactly dequantize's) are decoded once; per (row,
 *   column) two lane accumulators, A0 for the vectors at offsets 0 and 16 of
 *   each whole 32-value chunk, A1 for 8 and 24: A = fma(x, v, A); result
 *   hsum(A0 + A1) (same lane order as above) + tail (acc = acc + x*v in order);
 *   AVX-512 keeps A0 and A1 as the halves of one register.
 * - qmatmul small path, transpose=True: y[i, r] = fma(x[i, j] * s_jb, unit,
 *   y[i, r]) for j = 0, 1, ... in order, elementwise (4 storage rows per pass,
 *   same sequence per element): identical for any thread split and twin.
 * - qmatmul large path: panels of `panel` decoded storage rows (float32
 *   values s*unit, exact; the AVX-512 decoder looks up s*unit[c] in a 16-entry
 *   table of the block's products, the same products) multiplied with BLAS
 *   sgemm/dgemm; panel boundaries do not depend on the thread count.
 *
 * The functions below are serial: _quant.pyx runs them over independent chunks
 * (column strips, column groups, row chunks) in its parallel loops, with the
 * scratch buffers it allocates per thread.  No result depends on the split.
 */
#ifndef FASTDL_QUANTK_H
#define FASTDL_QUANTK_H
#include <stdint.h>

typedef struct {
    int64_t d_in, d_out;
    int64_t bs;          /* block size along d_in (d_in for per-tensor) */
    int64_t nb;          /* blocks per column (1 for per-tensor) */
    int64_t rowb;        /* bytes per storage row */
    int bits, nf4, per_tensor, dq;
    const uint8_t *data; /* (d_out, rowb) */
    const float *scales; /* (d_out*nb,) or (1,); NULL with dq */
    const int8_t *sc_codes;
    const float *sc_scales;
    float sc_mean;
} fdl_qk_desc;

typedef struct fdl_qk_kernels fdl_qk_kernels;
/* the kernels of SIMD level `level` (FDL_SIMD_*; a level above the compiled ones
 * gets the best compiled) */
const fdl_qk_kernels *fdl_qk_table(int level);

void fdl_qk_init(void);
/* the float32 NF4 thresholds used by quantize (for tests) */
const float *fdl_qk_nf4_thresholds(void);

/* ---- quantize: w (d_in, d_out) row-major -> data (d_out, rowb), scales ((d_out, nb) or (1,)) */
typedef struct {
    int bits, nf4, floor_, per_tensor;
    int64_t d_in, d_out, bs, nb, rowb;
    float qmax, gscale;
    int coff;
    int64_t R;           /* rows per tile (a multiple of 64 and of bs, or d_in) */
    int64_t JS;          /* columns per strip */
    int64_t nstrips;
} fdl_qk_qplan;
void fdl_qk_qplan_init(fdl_qk_qplan *p, int64_t d_in, int64_t d_out, int bits, int nf4,
                       int64_t bs, int floor_, int per_tensor, int nthreads);
/* per tensor: the largest |w[i]| bit pattern of [i0, i1) (NaN above inf above numbers) */
uint32_t fdl_qk_absmax_bits(const float *w, int64_t i0, int64_t i1);
/* per tensor: the scale from the tensor's largest bit pattern (kept in p) */
float fdl_qk_qplan_tensor_scale(fdl_qk_qplan *p, uint32_t mb);
/* column strip s; buf: R*JS bytes, msc: 2*JS floats of scratch */
void fdl_qk_quantize_strip(const fdl_qk_kernels *K, const fdl_qk_qplan *p, const float *w,
                           int64_t s, uint8_t *data, float *scales, uint8_t *buf, float *msc);

/* ---- dequantize: out (d_in, d_out) float32 (f64 = 0) or float64, in strips of columns */
int64_t fdl_qk_dequantize_strips(const fdl_qk_desc *q);
void fdl_qk_dequantize_strip(const fdl_qk_kernels *K, const fdl_qk_desc *q, int64_t s, void *out,
                             int f64);

/* ---- y = x @ W, small n: x (n, d_in), y (n, d_out) */
#define FDL_QK_MV_COLS 4
/* n = 1: floats of x in the kernels' lane order (0: x as it is), and that copy */
int64_t fdl_qk_mv1_xl_len(const fdl_qk_desc *q);
void fdl_qk_mv1_perm(const fdl_qk_desc *q, const float *x, float *xl);
/* n = 1: y[j] for j in [j0, j1); xl: the permuted x or NULL */
void fdl_qk_mv1_cols(const fdl_qk_kernels *K, const fdl_qk_desc *q, const float *x,
                     const float *xl, float *y, int64_t j0, int64_t j1);
/* n >= 2: y[:, j0:j1] (j1 - j0 <= FDL_QK_MV_COLS); xp: x with row stride ldp >= d_in;
 * val: FDL_QK_MV_COLS * ldp floats of scratch */
void fdl_qk_mvn_cols(const fdl_qk_kernels *K, const fdl_qk_desc *q, const float *xp, int64_t ldp,
                     int64_t n, float *y, int64_t j0, int64_t j1, float *val);
/* float64 x: column j (y[:, j]); vbuf: d_in floats of scratch */
void fdl_qk_mv_col_f64(const fdl_qk_kernels *K, const fdl_qk_desc *q, int64_t j, const double *x,
                       int64_t n, double *y, float *vbuf);

/* ---- y = x @ W.T, small n: x (n, d_out), y (n, d_in), in chunks of `ch` rows of d_in */
void fdl_qk_mt_plan(const fdl_qk_desc *q, int64_t n, int nthreads, int64_t *ch, int64_t *nch);
/* chunk c; cs: 4*n floats, yb: n*ldb floats (ldb >= ch) of scratch */
void fdl_qk_mt_chunk(const fdl_qk_kernels *K, const fdl_qk_desc *q, int64_t c, int64_t ch,
                     const float *x, int64_t n, float *y, float *cs, float *yb, int64_t ldb);
/* float64; ubuf: ch floats of scratch */
void fdl_qk_mt_chunk_f64(const fdl_qk_kernels *K, const fdl_qk_desc *q, int64_t c, int64_t ch,
                         const double *x, int64_t n, double *y, float *ubuf);

/* ---- large n: storage row j decoded (float32 values, or their float64 casts) */
void fdl_qk_decode_row(const fdl_qk_kernels *K, const fdl_qk_desc *q, int64_t j, void *dst,
                       int f64);
/* release the calling thread's OpenMP pool (its idle threads would spin-wait beside
 * the BLAS threads of the GEMM that follows a panel's decode); 0 when released */
int fdl_qk_release_team(void);

#endif
