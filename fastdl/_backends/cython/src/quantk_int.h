/* Internals shared by the quantization kernel files (quantk_*.c): the storage
 * format's accessors (one unit, one block scale), the function table every
 * ISA fills, and the scalar twins the SIMD overrides fall back to at block
 * edges.  The format and arithmetic contracts are in quantk.h. */
#ifndef FASTDL_QUANTK_INT_H
#define FASTDL_QUANTK_INT_H
#include "quantk.h"
#include "simd.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define K_INT8 0
#define K_LIN 1
#define K_NF4 2

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define NOINLINE __attribute__((noinline))

extern const float fdl_qk_nf4_cb[16];
/* the 16 units of a 4-bit code per table (0: NF4, 2..4: absmax bits, code - 2^(bits-1)) */
extern float fdl_qk_units[5][16];
/* their byte planes (pshufb lookup of the AVX2 n = 1 kernel) */
extern uint8_t fdl_qk_unit_planes[5][4][16];
extern float fdl_qk_nf4_t[16];

static inline int qk_kind(const fdl_qk_desc *q) {
    return q->bits > 4 ? K_INT8 : (q->nf4 ? K_NF4 : K_LIN);
}

static inline const float *qk_unit_table(const fdl_qk_desc *q) {
    return fdl_qk_units[q->nf4 ? 0 : (q->bits <= 4 ? q->bits : 4)];
}

/* dequantized scale of block b of column j */
static inline float qk_scale(const fdl_qk_desc *q, int64_t j, int64_t b) {
    if (q->per_tensor) return q->scales[0];
    int64_t u = j * q->nb + b;
    if (q->dq) {
        float t = (float)q->sc_codes[u] * q->sc_scales[u >> 8];
        t = t + q->sc_mean;
        /* clamped to [0, FLT_MAX]: a rebuilt scale must not flip a block's sign */
        return t > 0.0f ? (t < FLT_MAX ? t : FLT_MAX) : 0.0f;
    }
    return q->scales[u];
}

static inline int64_t qk_block(const fdl_qk_desc *q, int64_t r) {
    return q->per_tensor ? 0 : r / q->bs;
}

/* block of value r, tracked incrementally for increasing r (no division per step) */
typedef struct { int64_t b, lo, hi, bs; } qk_bcur;
static inline qk_bcur qk_bcur_init(const fdl_qk_desc *q, int64_t r) {
    qk_bcur c;
    if (q->per_tensor) { c.b = 0; c.lo = 0; c.hi = INT64_MAX; c.bs = INT64_MAX; return c; }
    c.bs = q->bs; c.b = r / q->bs; c.lo = c.b * q->bs; c.hi = c.lo + q->bs;
    return c;
}
static inline int64_t qk_bcur_at(qk_bcur *c, int64_t r) {
    while (r >= c->hi) { c->b++; c->lo = c->hi; c->hi += c->bs; }
    return c->b;
}

/* unit (code - offset, NF4 entry or int8 q) of value r of a storage row */
static inline float qk_unit(const fdl_qk_desc *q, const uint8_t *row, int64_t r) {
    if (q->bits > 4) return (float)(int8_t)row[r];
    int64_t G = q->d_in >> 6, g = r >> 6;
    unsigned c;
    if (g < G) {
        int64_t i = r & 63;
        c = i < 32 ? (row[32 * g + i] & 15u) : (unsigned)(row[32 * g + i - 32] >> 4);
    } else {
        int64_t rr = r - 64 * G, rem = q->d_in - 64 * G, h = (rem + 1) / 2;
        c = rr < h ? (row[32 * G + rr] & 15u) : (unsigned)(row[32 * G + rr - h] >> 4);
    }
    return q->nf4 ? fdl_qk_nf4_cb[c] : (float)((int)c - (1 << (q->bits - 1)));
}

/* number of whole 32-value halves of a row */
static inline int64_t qk_halves(const fdl_qk_desc *q) {
    return q->bits > 4 ? q->d_in / 32 : 2 * (q->d_in / 64);
}

/* bytes of half H of a row */
static ALWAYS_INLINE const uint8_t *qk_half_ptr(int kind, const uint8_t *row, int64_t H) {
    return kind == K_INT8 ? row + 32 * H : row + 32 * (H >> 1);
}

/* NF4, n = 1: the value of vector v, lane l of a 32-value half (the order the AVX2
 * pshufb lookup + byte/word interleaves produce); the other kinds use lane order 8v + l */
static inline int64_t qk_lane_idx(int v, int l) { return l < 4 ? 4 * v + l : 16 + 4 * v + (l - 4); }
/* NF4, n = 1: where vector v's 8 floats of x sit in the permuted copy xl (A0, A2, A1,
 * A3: the AVX-512 kernel holds (A0 | A2) and (A1 | A3) in its two registers) */
static inline int qk_xl_pos(int v) { return (v & 1) * 2 + (v >> 1); }

/* quantize: one format's constants and tiling (quantk.h) */
typedef fdl_qk_qplan qz_t;

/* The kernels one SIMD level runs; each ISA's table lists its overrides and the
 * lower level's functions for the rest (quantk_table.c).  Every entry is bitwise
 * equal to the scalar one. */
struct fdl_qk_kernels {
    /* quantize: codes of columns [j0, j0+jw) x rows [r0, r1) -> buf[jj*R + r - r0],
     * block scales -> scales; msc: 2*jw floats of scratch */
    void (*qz_tile)(const qz_t *z, const float *w, int64_t j0, int64_t jw, int64_t r0,
                    int64_t r1, uint8_t *buf, int64_t R, float *scales, float *msc);
    /* values s*unit of storage row j, rows [r0, r1) (r0 % 64 == 0) -> dst[0..r1-r0) */
    void (*dec_range)(const fdl_qk_desc *q, int64_t j, int64_t r0, int64_t r1, float *dst);
    /* n = 1, the whole halves of column j (nHf > 0, hpb halves per block): NF4 reads
     * x in the lane order, xl[32H + 8 qk_xl_pos(v) + l] = x[32H + qk_lane_idx(v, l)] */
    void (*mv_fast[3])(const fdl_qk_desc *q, const uint8_t *row, int64_t j, const float *x,
                       int64_t nHf, int64_t hpb, float *res);
    /* n >= 2: nr (1..2) rows of x against nc (1..MV_COLS) decoded columns over nV whole
     * 32-value chunks: res[i*MV_COLS + c] = hsum8(A0 + A1) (quantk.h) */
    void (*mvv)(const float *val, int64_t ldv, int nc, const float *x, int64_t ldx, int nr,
                int64_t nV, float *res);
    /* transposed: storage rows j..j+jb-1 (jb 1..4) into y rows [a, e) */
    void (*mt_rows)(const fdl_qk_desc *q, int64_t j, int jb, const float *x, int64_t n,
                    float *y, int64_t ldy, int64_t yoff, int64_t a, int64_t e, float *cs);
};
#define MV_COLS 4

/* scalar twins (also the SIMD versions' fallbacks for half blocks) */
void fdl_qk_qz_tile_scalar(const qz_t *z, const float *w, int64_t j0, int64_t jw, int64_t r0,
                           int64_t r1, uint8_t *buf, int64_t R, float *scales, float *msc);
void fdl_qk_dec_range_scalar(const fdl_qk_desc *q, int64_t j, int64_t r0, int64_t r1, float *dst);
void fdl_qk_mv_fast_scalar(const fdl_qk_desc *q, const uint8_t *row, int64_t j, const float *x,
                           int64_t nHf, int64_t hpb, float *res);
void fdl_qk_mvv_scalar(const float *val, int64_t ldv, int nc, const float *x, int64_t ldx, int nr,
                       int64_t nV, float *res);
void fdl_qk_mt_rows_scalar(const fdl_qk_desc *q, int64_t j, int jb, const float *x, int64_t n,
                           float *y, int64_t ldy, int64_t yoff, int64_t a, int64_t e, float *cs);
void fdl_qk_mt_range_scalar(const fdl_qk_desc *q, const uint8_t *row, int64_t j, const float *x,
                            int64_t n, float *y, int64_t ldy, int64_t yoff, int64_t a, int64_t e);

/* The transposed path's loop over 32-row halves, shared by the SIMD builds: returns 0 when
 * half H (rows 32H..32H+31) was done by the scalar twin (a block ends inside it), else 1
 * with cs[jj*n + i] = x[i, j+jj] * scale of the half's block (recomputed when it changes). */
static ALWAYS_INLINE int qk_mt_half_prep(const fdl_qk_desc *q, const uint8_t *const *rows, int JB,
                                         int64_t j, const float *x, int64_t n, float *y,
                                         int64_t ldy, int64_t yoff, int64_t H, qk_bcur *bc,
                                         int64_t *bprev, float *cs) {
    int64_t r = 32 * H, b = qk_bcur_at(bc, r);
    if (r + 31 >= bc->hi) {
        for (int jj = 0; jj < JB; jj++)
            fdl_qk_mt_range_scalar(q, rows[jj], j + jj, x, n, y, ldy, yoff, r, r + 32);
        return 0;
    }
    if (b != *bprev) {
        for (int jj = 0; jj < JB; jj++) {
            float s = qk_scale(q, j + jj, b);
            for (int64_t i = 0; i < n; i++) cs[jj * n + i] = x[i * q->d_out + j + jj] * s;
        }
        *bprev = b;
    }
    return 1;
}

/* rows [max(32H, a), e) after the SIMD halves, by the scalar twin */
static ALWAYS_INLINE void qk_mt_tail(const fdl_qk_desc *q, const uint8_t *const *rows, int JB,
                                     int64_t j, const float *x, int64_t n, float *y, int64_t ldy,
                                     int64_t yoff, int64_t H, int64_t a, int64_t e) {
    int64_t rs = 32 * H > a ? 32 * H : a;
    if (rs < e)
        for (int jj = 0; jj < JB; jj++)
            fdl_qk_mt_range_scalar(q, rows[jj], j + jj, x, n, y, ldy, yoff, rs, e);
}

#if FDL_HAVE_AVX2_TARGET
void fdl_qk_qz_tile_avx2(const qz_t *z, const float *w, int64_t j0, int64_t jw, int64_t r0,
                         int64_t r1, uint8_t *buf, int64_t R, float *scales, float *msc);
void fdl_qk_dec_range_avx2(const fdl_qk_desc *q, int64_t j, int64_t r0, int64_t r1, float *dst);
void fdl_qk_mv_i8_avx2(const fdl_qk_desc *, const uint8_t *, int64_t, const float *, int64_t,
                       int64_t, float *);
void fdl_qk_mv_lin_avx2(const fdl_qk_desc *, const uint8_t *, int64_t, const float *, int64_t,
                        int64_t, float *);
void fdl_qk_mv_nf4_avx2(const fdl_qk_desc *, const uint8_t *, int64_t, const float *, int64_t,
                        int64_t, float *);
void fdl_qk_mvv_avx2(const float *val, int64_t ldv, int nc, const float *x, int64_t ldx, int nr,
                     int64_t nV, float *res);
void fdl_qk_mt_rows_avx2(const fdl_qk_desc *q, int64_t j, int jb, const float *x, int64_t n,
                         float *y, int64_t ldy, int64_t yoff, int64_t a, int64_t e, float *cs);

void fdl_qk_dec_range_avx512(const fdl_qk_desc *q, int64_t j, int64_t r0, int64_t r1, float *dst);
void fdl_qk_mv_i8_avx512(const fdl_qk_desc *, const uint8_t *, int64_t, const float *, int64_t,
                         int64_t, float *);
void fdl_qk_mv_lin_avx512(const fdl_qk_desc *, const uint8_t *, int64_t, const float *, int64_t,
                          int64_t, float *);
void fdl_qk_mv_nf4_avx512(const fdl_qk_desc *, const uint8_t *, int64_t, const float *, int64_t,
                          int64_t, float *);
void fdl_qk_mvv_avx512(const float *val, int64_t ldv, int nc, const float *x, int64_t ldx, int nr,
                       int64_t nV, float *res);
void fdl_qk_mt_rows_avx512(const fdl_qk_desc *q, int64_t j, int jb, const float *x, int64_t n,
                           float *y, int64_t ldy, int64_t yoff, int64_t a, int64_t e, float *cs);
#endif

#endif
