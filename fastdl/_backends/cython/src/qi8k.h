/* Int8-activation quantized matmul, y = x @ dequantize(q) (rows layout of
 * fastdl/quant.py), for _qint8.pyx.
 *
 * Activations: each row of x in blocks of 32 values (the last block zero
 * padded), as llama.cpp's Q8_0: d = absmax / 127 (float32), id = 1 / d,
 * q = round_half_away(x * id) clipped to [-127, 127]; blocks with absmax below
 * 2^-100 (or 0) get d = 0, q = 0.  Per block: d (float32), sum of q (int32).
 *
 * Integer part (exact, so every tier gets the same integers however it adds
 * them): isum[i, j, s] = sum over the 32 values of block s of q_x * unit_w,
 * unit_w = code - 2^(bits-1) (bits 2..4) or the int8 q (bits 5..8).
 *
 * Float part (the one order every tier follows; FMA = one rounding):
 *     tot = 0
 *     for each weight block B in order:   acc = 0
 *         for each 32-block s of B in order:  acc = fma(float(isum_s), d_x[s], acc)
 *         tot = fma(acc, scale_w[B], tot)
 *     y[i, j] = tot
 * A weight block is a multiple of 32 values, or the whole column (per-tensor
 * scale, or a block size >= d_in); float(isum) is exact (|isum| < 2^24).
 *
 * The kernels are serial; _qint8.pyx runs them over independent column groups
 * / strips.  Results do not depend on the split or the tier.
 */
#ifndef FASTDL_QI8K_H
#define FASTDL_QI8K_H
#include <stdint.h>
#include "quantk.h"

#define FDL_QI8_SCALAR 0
#define FDL_QI8_AVX2 1
#define FDL_QI8_AVXVNNI 2
#define FDL_QI8_AVX512VNNI 3
#define FDL_QI8_AMX 4
#define FDL_QI8_NTIERS 5
/* the AMX tier is built for x86-64 Linux (the OS grants the tile state per process) */
#if (defined(__x86_64__) && defined(__linux__)) && (defined(__GNUC__) || defined(__clang__))
#define FDL_QI8_HAVE_AMX 1
#else
#define FDL_QI8_HAVE_AMX 0
#endif

#define FDL_QI8_TILE 16      /* rows per x panel tile */
#define FDL_QI8_NC 8         /* columns per strip micro-kernel group */
#define FDL_QI8_GV 8         /* columns per small-n group */

/* quantized activations */
typedef struct {
    int64_t n, d_in, kp, nb32;   /* kp = 32 * nb32 >= d_in */
    const int8_t *qx;            /* (n, kp) */
    const float *dx;             /* (n, nb32) */
    const int32_t *sq;           /* (n, nb32) sum of q per block */
    const uint8_t *xp;           /* strip path panel: (ntile, nb32, 8, 16, 4) q + 128 */
    const float *dxp;            /* (ntile, nb32, 16) */
    int64_t ntile;
} fdl_qi8_x;

/* a strip of unpacked weight columns */
typedef struct {
    int64_t j0, jw, jwp;         /* first column, columns, columns padded to FDL_QI8_NC */
    int64_t kp, nb32, nbw, spb;  /* kp: row stride of wu (>= 32 * nb32); nbw: weight blocks
                                  * per column; spb: 32-blocks per weight block */
    int wide;                    /* units may lie beyond +-15 (int8 weights) */
    int8_t *wu;                  /* (jwp, kp) units, 0 past d_in */
    int32_t *wc;                 /* (jwp, nb32) -128 * sum of units */
    float *sw;                   /* (jwp, nbw) weight scales */
} fdl_qi8_w;

/* the weights reordered for the small-n kernel (fdl_qi8_pack_tile): tiles of 16 columns
 * (lanes); per tile and 32-block s, 8 operands of 64 bytes, operand i holding for lane l
 * the codes + off (u8) of inputs 32s + 4i .. 32s + 4i + 3.  Nibble formats (bits <= 4,
 * off = 2^(bits-1)) pack operands 2p and 2p+1 into one 64-byte vector: low nibbles
 * operand 2p, high nibbles 2p+1 (256 bytes per tile and block); byte formats (off = 128)
 * store them as bytes (512).  Inputs past d_in hold code off (unit 0), columns past
 * d_out code off and scale 0.  st: the weight scales per tile, st[(t nbw + B) 16 + l]. */
typedef struct {
    int64_t d_out, NT, nb32, nbw, spb;
    int wide, off;
    const uint8_t *wt;           /* NT * nb32 * (wide ? 512 : 256) bytes */
    const float *st;             /* NT * nbw * 16 */
} fdl_qi8_t;

typedef struct fdl_qi8_kernels {
    const char *name;
    /* rows [r0, r1) of x (n, d_in) -> qx, dx, sq; returns the number of blocks holding
     * a non-finite value (their q and d are set to 0) */
    int64_t (*quant)(const float *x, int64_t r0, int64_t r1, int64_t d_in, int64_t kp,
                     int8_t *qx, float *dx, int32_t *sq);
    /* small n, straight from the storage rows: y[:, j0:j1]; NULL: the tier uses the strip
     * path for every n.  scratch: fdl_qi8_gemv_scratch bytes */
    void (*gemv)(const fdl_qk_desc *q, const fdl_qi8_x *X, float *y, int64_t j0, int64_t j1,
                 void *scratch);
    /* y[:, W->j0 : W->j0 + W->jw] from an unpacked strip; tbuf: 2 * TILE floats per column
     * of the strip padded to NC (the micro-kernels' float state) */
    void (*strip)(const fdl_qi8_x *X, const fdl_qi8_w *W, float *y, int64_t ldy, float *tbuf);
    /* NULL, or small n from the reordered weights: y[:, 16 t0 .. 16 t1) (clipped to d_out);
     * the same integers and float order as gemv */
    void (*tiles)(const fdl_qi8_t *T, const fdl_qi8_x *X, float *y, int64_t t0, int64_t t1);
    /* NULL, or many rows from the reordered weights by tile products (fdl_qi8_amx) */
    void (*amx)(const fdl_qi8_t *T, const fdl_qi8_x *X, const int8_t *xk, const float *dk,
                float *y, int64_t t0, int64_t t1, void *scratch);
} fdl_qi8_kernels;

/* best tier the CPU runs at SIMD level `simd_level` (FDL_SIMD_*) */
int fdl_qi8_best_tier(int simd_level);
/* whether tier `tier` runs on this CPU at SIMD level `simd_level` */
int fdl_qi8_tier_runs(int tier, int simd_level);
const fdl_qi8_kernels *fdl_qi8_table(int tier);

/* tile t of the strip path's x panel */
void fdl_qi8_xpanel_tile(const fdl_qi8_x *X, int64_t t, uint8_t *xp, float *dxp);
/* 32-blocks per weight block (nb32 for one block per column) */
int64_t fdl_qi8_spb(const fdl_qk_desc *q, int64_t nb32);
/* unpack columns [j0, j0 + jw) into W (its buffers sized for jwp columns) */
void fdl_qi8_unpack_strip(const fdl_qk_desc *q, fdl_qi8_w *W);
int64_t fdl_qi8_gemv_scratch(int64_t n, int64_t kp, int64_t nb32, int64_t nbw);
/* whether the CPU and OS run the AMX tier (asks the OS for the tile state once) */
int fdl_qi8_amx_ok(void);
/* scratch bytes of one fdl_qi8_amx call */
int64_t fdl_qi8_amx_scratch(int64_t nb32);
/* y[:, 16 t0 .. 16 t1) by AMX tile products; xk / dk: X's q and d packed per 16-row tile
 * and 32-block (fdl_qi8_amx_pack_x) */
void fdl_qi8_amx(const fdl_qi8_t *T, const fdl_qi8_x *X, const int8_t *xk, const float *dk,
                 float *y, int64_t t0, int64_t t1, void *scratch);
/* row tile rt of X into xk[((rt nb32 + s) 16 + r) 32 + k], dk[(rt nb32 + s) 16 + r]
 * (rows past n zero) */
void fdl_qi8_amx_pack_x(const fdl_qi8_x *X, int64_t rt, int8_t *xk, float *dk);
/* T for q's reordered weights at wt, st (their sizes: NT * nb32 * (wide ? 512 : 256)
 * bytes, NT * nbw * 16 floats) */
void fdl_qi8_tiles_init(const fdl_qk_desc *q, const uint8_t *wt, const float *st, fdl_qi8_t *T);
/* tile t of the reordered weights (fdl_qi8_t) of q: wt, st as there (whole arrays);
 * tmp: 32 * nb32 bytes */
void fdl_qi8_pack_tile(const fdl_qk_desc *q, int64_t t, uint8_t *wt, float *st, int8_t *tmp);

/* scalar twins (also the tails of the SIMD kernels) */
void fdl_qi8_gemv_scalar(const fdl_qk_desc *q, const fdl_qi8_x *X, float *y, int64_t j0,
                         int64_t j1, void *scratch);
void fdl_qi8_strip_scalar(const fdl_qi8_x *X, const fdl_qi8_w *W, float *y, int64_t ldy,
                          float *tbuf);
#if defined(__x86_64__) || defined(__i386__)
void fdl_qi8_strip_avx2(const fdl_qi8_x *X, const fdl_qi8_w *W, float *y, int64_t ldy,
                        float *tbuf);
void fdl_qi8_strip_avxvnni(const fdl_qi8_x *X, const fdl_qi8_w *W, float *y, int64_t ldy,
                           float *tbuf);
void fdl_qi8_strip_avx512(const fdl_qi8_x *X, const fdl_qi8_w *W, float *y, int64_t ldy,
                          float *tbuf);
void fdl_qi8_gemv_avx512(const fdl_qk_desc *q, const fdl_qi8_x *X, float *y, int64_t j0,
                         int64_t j1, void *scratch);
void fdl_qi8_tiles_avx512(const fdl_qi8_t *T, const fdl_qi8_x *X, float *y, int64_t t0,
                          int64_t t1);
#endif
#endif
