/* bf16 compute: the scalar emulation of the AVX512-BF16 kernels (the arithmetic's
 * definition, qbf16k.h), the shared layout helpers and the drivers. */
#include "qbf16k.h"
#include "quantk_int.h"

#include <math.h>
#include <string.h>

/* the bf16 units per table: 0 NF4, 2..4 absmax/signmax bits (code - 2^(bits-1));
 * 32 entries, entry i = unit of code i & 15 (vpermw reads 5 index bits) */
uint16_t fdl_qb_units[5][32];

static float qb_f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t qb_u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

uint16_t fdl_qb_bf16(float v) {
    uint32_t u = qb_u(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  /* quiet NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

void fdl_qb_init(const float *nf4_codebook) {
    for (int t = 0; t < 5; t++)
        for (int i = 0; i < 32; i++) {
            int c = i & 15;
            float u = t == 0 ? nf4_codebook[c] : (float)(c - (1 << ((t < 2 ? 2 : t) - 1)));
            fdl_qb_units[t][i] = fdl_qb_bf16(u);
        }
}

int fdl_qb_cpu_bf16(void) {
#if FDL_HAVE_AVX2_TARGET
    __builtin_cpu_init();
    return fdl_cpu_simd_level() >= FDL_SIMD_AVX512 && __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

/* ---- vdpbf16ps, one lane, as the SDM defines it (DAZ, FTZ, RNE) */
static inline float qb_ftz(float v) { return fabsf(v) < FLT_MIN ? copysignf(0.0f, v) : v; }
static inline float qb_in(uint16_t h) { return qb_ftz(qb_f((uint32_t)h << 16)); }
static inline float qb_dp(float acc, uint16_t a0, uint16_t b0, uint16_t a1, uint16_t b1) {
    acc = qb_ftz(acc + qb_in(a1) * qb_in(b1));
    return qb_ftz(acc + qb_in(a0) * qb_in(b0));
}

static inline const uint16_t *qb_table(const fdl_qk_desc *q) {
    return fdl_qb_units[q->nf4 ? 0 : (q->bits <= 4 ? q->bits : 4)];
}

int fdl_qb_merged(const fdl_qk_desc *q) {
    return q->bits <= 4 && (q->per_tensor || q->bs % 64 == 0 || q->nb == 1);
}

int64_t fdl_qb_steps(const fdl_qk_desc *q) {
    if (q->bits > 4) return q->d_in / 64;
    return 2 * ((q->d_in / 64 + 1) / 2);
}

/* value index of word w of vector e of step k (-1: the missing group of an odd quad) */
static inline int64_t qb_value(const fdl_qk_desc *q, int64_t k, int e, int w) {
    if (q->bits > 4) return 64 * k + 32 * (w >> 4) + 16 * e + (w & 15);
    int64_t s = k >> 1, g = 2 * s + (w >> 4);
    int a = (int)(k & 1), nib = a + 2 * e, kk = w & 15;
    if (g >= q->d_in / 64) return -1;
    return 64 * g + 2 * kk + (nib >> 1) + 32 * (nib & 1);
}

void fdl_qb_xperm(const fdl_qk_desc *q, const float *x, uint16_t *xp) {
    int64_t K = fdl_qb_steps(q);
    for (int64_t k = 0; k < K; k++)
        for (int e = 0; e < 2; e++)
            for (int w = 0; w < 32; w++) {
                int64_t r = qb_value(q, k, e, w);
                xp[64 * k + 32 * e + w] = r < 0 ? 0 : fdl_qb_bf16(x[r]);
            }
}

void fdl_qb_lane_blocks(const fdl_qk_desc *q, int32_t *lb) {
    int64_t K = fdl_qb_steps(q), G = q->d_in / 64;
    for (int64_t k = 0; k < K; k++)
        for (int h = 0; h < 2; h++) {
            /* the first value of the lanes' half */
            int64_t r;
            if (q->bits > 4) r = 64 * k + 32 * h;
            else {
                int64_t g = 2 * (k >> 1) + h;
                r = g < G ? 64 * g + 32 * (k & 1) : -1;
            }
            lb[2 * k + h] = (int32_t)(r < 0 ? q->nb : qk_block(q, r));
        }
}

void fdl_qb_block_scales(const fdl_qk_desc *q, int64_t j, float *bsc) {
    int64_t nb = q->nb;
    bsc[nb] = 0.0f;
    if (q->per_tensor) {
        bsc[0] = q->scales[0];
        return;
    }
    if (!q->dq) {
        memcpy(bsc, q->scales + j * nb, (size_t)nb * sizeof(float));
        return;
    }
    /* qk_scale's arithmetic, in runs of one 256-scale group (a loop the compiler
     * vectorizes: this runs once per column) */
    int64_t u0 = j * nb;
    for (int64_t b0 = 0; b0 < nb;) {
        int64_t g = (u0 + b0) >> 8, b1 = ((g + 1) << 8) - u0;
        if (b1 > nb) b1 = nb;
        float gs = q->sc_scales[g], mean = q->sc_mean;
        const int8_t *c = q->sc_codes + u0;
        for (int64_t b = b0; b < b1; b++) {
            float t = (float)c[b] * gs;
            t = t + mean;
            bsc[b] = t > 0.0f ? (t < FLT_MAX ? t : FLT_MAX) : 0.0f;
        }
        b0 = b1;
    }
}

/* unit code of value r of a 4-bit row (the storage format's nibble order) */
static inline unsigned qb_code(const fdl_qk_desc *q, const uint8_t *row, int64_t r) {
    int64_t G = q->d_in >> 6, g = r >> 6;
    if (g < G) {
        int64_t i = r & 63;
        return i < 32 ? (row[32 * g + i] & 15u) : (unsigned)(row[32 * g + i - 32] >> 4);
    }
    int64_t rr = r - 64 * G, rem = q->d_in - 64 * G, h = (rem + 1) / 2;
    return rr < h ? (row[32 * G + rr] & 15u) : (unsigned)(row[32 * G + rr - h] >> 4);
}

float fdl_qb_tail(const fdl_qk_desc *q, int64_t j, const float *x) {
    int64_t r0 = 64 * (q->d_in / 64);      /* both kinds: the values after whole 64-runs */
    if (r0 >= q->d_in) return 0.0f;
    const uint8_t *row = q->data + j * q->rowb;
    const uint16_t *tb = qb_table(q);
    qk_bcur bc = qk_bcur_init(q, r0);
    int64_t b = qk_bcur_at(&bc, r0);
    float acc = 0.0f, t = 0.0f;
    for (int64_t r = r0; r < q->d_in; r++) {
        int64_t br = qk_bcur_at(&bc, r);
        if (br != b) {
            t = fmaf(acc, qk_scale(q, j, b), t);
            acc = 0.0f;
            b = br;
        }
        uint16_t u = q->bits > 4 ? fdl_qb_bf16((float)(int8_t)row[r]) : tb[qb_code(q, row, r)];
        acc = qb_ftz(acc + qb_in(fdl_qb_bf16(x[r])) * qb_in(u));
    }
    return fmaf(acc, qk_scale(q, j, b), t);
}

/* ---- the scalar twins */
/* the 64 units of step k of a storage row, in lane order */
static void qb_decode_step(const fdl_qk_desc *q, const uint8_t *row, int64_t k, uint16_t *w64) {
    const uint16_t *tb = qb_table(q);
    for (int e = 0; e < 2; e++)
        for (int w = 0; w < 32; w++) {
            int64_t r = qb_value(q, k, e, w);
            uint16_t u;
            if (q->bits > 4) u = fdl_qb_bf16((float)(int8_t)row[r]);
            else u = r < 0 ? tb[0] : tb[qb_code(q, row, r)];   /* missing group: zero bytes */
            w64[32 * e + w] = u;
        }
}

static void qb_decode_col_scalar(const fdl_qk_desc *q, int64_t j, uint16_t *wb) {
    int64_t K = fdl_qb_steps(q);
    const uint8_t *row = q->data + j * q->rowb;
    for (int64_t k = 0; k < K; k++) qb_decode_step(q, row, k, wb + 64 * k);
}

/* step k of the lane sums: A = dp(dp(A, X0, W0), X1, W1) from A = 0 at the start of
 * a sum (every step, or every quad when merged), then T = fma(A, S, T) at its end */
static inline void qb_step(float *A, float (*T)[16], int merged, int64_t k, const uint16_t *x0,
                           const uint16_t *w0, float s0, float s1) {
    if (!merged || !(k & 1))
        for (int l = 0; l < 16; l++) A[l] = 0.0f;
    for (int l = 0; l < 16; l++) {
        A[l] = qb_dp(A[l], x0[2 * l], w0[2 * l], x0[2 * l + 1], w0[2 * l + 1]);
        A[l] = qb_dp(A[l], x0[32 + 2 * l], w0[32 + 2 * l], x0[33 + 2 * l], w0[33 + 2 * l]);
    }
    if (merged && !(k & 1)) return;
    float *t = T[merged ? (k >> 1) & 1 : k & 1];
    for (int l = 0; l < 16; l++) t[l] = fmaf(A[l], l < 8 ? s0 : s1, t[l]);
}

static float qb_tree(const float *T0, const float *T1) {
    float a[16];
    for (int l = 0; l < 16; l++) a[l] = T0[l] + T1[l];
    for (int l = 0; l < 8; l++) a[l] = a[l] + a[l + 8];
    for (int l = 0; l < 4; l++) a[l] = a[l] + a[l + 4];
    for (int l = 0; l < 2; l++) a[l] = a[l] + a[l + 2];
    return a[0] + a[1];
}

static void qb_main_dec_scalar(const uint16_t *wb, int64_t ldw, int jn, int64_t nsteps,
                               int merged, const uint16_t *xp, const int32_t *lb,
                               const float *bsc, int64_t ldb, float *res) {
    for (int c = 0; c < jn; c++) {
        const uint16_t *w = wb + c * ldw;
        const float *s = bsc + c * ldb;
        float A[16], T[2][16] = {{0}};
        for (int64_t k = 0; k < nsteps; k++)
            qb_step(A, T, merged, k, xp + 64 * k, w + 64 * k, s[lb[2 * k]], s[lb[2 * k + 1]]);
        res[c] = qb_tree(T[0], T[1]);
    }
}

static void qb_main_cols_scalar(const fdl_qk_desc *q, const uint16_t *xp, int64_t j0, int jn,
                                const int32_t *lb, const float *bsc, int64_t ldb,
                                float *res) {
    int64_t K = fdl_qb_steps(q);
    int merged = fdl_qb_merged(q);
    uint16_t w64[64];
    for (int c = 0; c < jn; c++) {
        const uint8_t *row = q->data + (j0 + c) * q->rowb;
        const float *s = bsc + c * ldb;
        float A[16], T[2][16] = {{0}};
        for (int64_t k = 0; k < K; k++) {
            qb_decode_step(q, row, k, w64);
            qb_step(A, T, merged, k, xp + 64 * k, w64, s[lb[2 * k]], s[lb[2 * k + 1]]);
        }
        res[c] = qb_tree(T[0], T[1]);
    }
}

static const fdl_qb_kernels qb_scalar = {qb_main_cols_scalar, qb_decode_col_scalar,
                                         qb_main_dec_scalar};

const fdl_qb_kernels *fdl_qb_table(int bf16) {
#if FDL_HAVE_AVX2_TARGET
    if (bf16) return &fdl_qb_kernels_avx512bf16;
#endif
    (void)bf16;
    return &qb_scalar;
}

/* ---- drivers */
void fdl_qb_cols1(const fdl_qb_kernels *K, const fdl_qk_desc *q, const float *x,
                  const uint16_t *xp, int64_t j0, int64_t j1, const int32_t *lb, float *bsc,
                  float *y) {
    int64_t ldb = q->nb + 1;
    float res[FDL_QB_COLS];
    int jn = (int)(j1 - j0);
    for (int c = 0; c < jn; c++) fdl_qb_block_scales(q, j0 + c, bsc + c * ldb);
    K->main_cols(q, xp, j0, jn, lb, bsc, ldb, res);
    for (int c = 0; c < jn; c++) y[j0 + c] = res[c] + fdl_qb_tail(q, j0 + c, x);
}

void fdl_qb_colsn(const fdl_qb_kernels *K, const fdl_qk_desc *q, const float *x, int64_t n,
                  const uint16_t *xps, int64_t j0, int64_t j1, uint16_t *wb, const int32_t *lb,
                  float *bsc, float *y) {
    int64_t nst = fdl_qb_steps(q), ldb = q->nb + 1, ldw = 64 * nst;
    float res[FDL_QB_COLS];
    int jn = (int)(j1 - j0);
    for (int c = 0; c < jn; c++) {
        fdl_qb_block_scales(q, j0 + c, bsc + c * ldb);
        K->decode_col(q, j0 + c, wb + c * ldw);
    }
    for (int64_t i = 0; i < n; i++) {
        K->main_dec(wb, ldw, jn, nst, fdl_qb_merged(q), xps + i * ldw, lb, bsc, ldb, res);
        for (int c = 0; c < jn; c++)
            y[i * q->d_out + j0 + c] = res[c] + fdl_qb_tail(q, j0 + c, x + i * q->d_in);
    }
}
