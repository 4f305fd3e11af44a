#include "moments.h"

#include <math.h>
#include "simd.h"
#include "f16.h"

/* Lane k of a 16-lane accumulator holds the terms x[i] with i % 16 == k.
 * Both twins reduce the lanes with this tree. */
static inline double reduce16(const double *a) {
    double t[8], u[4];
    for (int k = 0; k < 8; k++) t[k] = a[k] + a[k + 8];
    for (int k = 0; k < 4; k++) u[k] = t[k] + t[k + 4];
    return (u[0] + u[2]) + (u[1] + u[3]);
}

/* mean = K + sum(x - K) / n, where K is the first-pass mean.  A non-finite K
 * (the data hold inf or nan) is already the mean NumPy gives (inf - inf in
 * the correction would turn +inf into nan). */
static inline double shifted_mean(double K, double s1, int64_t n) {
    return isfinite(K) ? K + s1 / (double)n : K;
}

static inline void finish(double s, double c, int64_t n, double *m2) {
    double v = s - c * c / (double)n;
    *m2 = v < 0.0 ? 0.0 : v;   /* rounding can dip below 0; NaN passes */
}

/* float64 pass 2 over x[i:n] (past the last full 16-lane step), then the result. */
static inline void tail_finish_f64(const double *x, int64_t i, int64_t n, double m,
                                   double *sq, double *dv, double *mean, double *m2) {
    for (; i < n; i++) {
        double d = x[i] - m;
        sq[i & 15] += d * d;
        dv[i & 15] += d;
    }
    double c1 = reduce16(dv);
    *mean = shifted_mean(m, c1, n);
    finish(reduce16(sq), c1, n, m2);
}

/* ---- scalar twins (reference; the compiler may vectorize across lanes) ---- */
static void moments_f64_scalar(const double *x, int64_t n, double *mean, double *m2) {
    double acc[16] = {0}, sq[16] = {0}, dv[16] = {0};
    int64_t i = 0, n16 = n & ~(int64_t)15;
    for (; i < n16; i += 16)
        for (int k = 0; k < 16; k++) acc[k] += x[i + k];
    for (; i < n; i++) acc[i & 15] += x[i];
    double m = reduce16(acc) / (double)n;
    for (i = 0; i < n16; i += 16)
        for (int k = 0; k < 16; k++) {
            double d = x[i + k] - m;
            sq[k] += d * d;
            dv[k] += d;
        }
    tail_finish_f64(x, i, n, m, sq, dv, mean, m2);
}

/* float32: 32 float lanes (lane k gets x[i], i % 32 == k) within a block of at
 * most a few thousand elements, so each lane adds ~100 terms in float; lanes
 * are combined in double.  Pass 2 works on d = x - K with K the float32
 * first-pass mean, which is exact for x near K; mean = K + sum(d)/n and
 * M2 = sum(d^2) - sum(d)^2/n remove the error of K. */
static inline double reduce32f(const float *a) {
    double r[16];
    for (int k = 0; k < 16; k++) r[k] = (double)a[k] + (double)a[k + 16];
    return reduce16(r);
}

static inline void finish_f32(const float *sq, const float *dv, float K, int64_t n,
                              double *mean, double *m2) {
    double s1 = reduce32f(dv);
    *mean = shifted_mean((double)K, s1, n);
    finish(reduce32f(sq), s1, n, m2);
}

/* Pass 2 over x[i:n] (the tail past the last full 32-lane step). */
static inline void pass2_tail_f32(const float *x, int64_t i, int64_t n, float K,
                                  float *sq, float *dv) {
    for (; i < n; i++) {
        float d = x[i] - K;
        sq[i & 31] += d * d;
        dv[i & 31] += d;
    }
}

static void moments_f32_scalar(const float *x, int64_t n, double *mean, double *m2) {
    float acc[32] = {0}, sq[32] = {0}, dv[32] = {0};
    int64_t i = 0, n32 = n & ~(int64_t)31;
    for (; i < n32; i += 32)
        for (int k = 0; k < 32; k++) acc[k] += x[i + k];
    for (; i < n; i++) acc[i & 31] += x[i];
    float K = (float)(reduce32f(acc) / (double)n);
    for (i = 0; i < n32; i += 32)
        for (int k = 0; k < 32; k++) {
            float d = x[i + k] - K;
            sq[k] += d * d;
            dv[k] += d;
        }
    pass2_tail_f32(x, i, n, K, sq, dv);
    finish_f32(sq, dv, K, n, mean, m2);
}

#if FDL_HAVE_AVX2_TARGET
/* The lane reductions above, on lanes held in 4 vectors (same trees). */
FDL_TARGET_AVX2 static inline double hsum4_tree(__m256d u) {
    /* (u0 + u2) + (u1 + u3) */
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(u), _mm256_extractf128_pd(u, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

FDL_TARGET_AVX2 static inline double reduce16_avx2(const __m256d v[4]) {
    return hsum4_tree(_mm256_add_pd(_mm256_add_pd(v[0], v[2]), _mm256_add_pd(v[1], v[3])));
}

FDL_TARGET_AVX2 static inline double reduce32f_avx2(const __m256 v[4]) {
    __m256d r0 = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v[0])),
                               _mm256_cvtps_pd(_mm256_castps256_ps128(v[2])));
    __m256d r1 = _mm256_add_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v[0], 1)),
                               _mm256_cvtps_pd(_mm256_extractf128_ps(v[2], 1)));
    __m256d r2 = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v[1])),
                               _mm256_cvtps_pd(_mm256_castps256_ps128(v[3])));
    __m256d r3 = _mm256_add_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v[1], 1)),
                               _mm256_cvtps_pd(_mm256_extractf128_ps(v[3], 1)));
    return hsum4_tree(_mm256_add_pd(_mm256_add_pd(r0, r2), _mm256_add_pd(r1, r3)));
}
#endif

/* Software prefetch distance (bytes) for the streamed block in the pipelined
 * loop: 8 KiB ahead took the kernel from ~0.6x to ~0.97x of a plain read's
 * bandwidth on the project's machines (1 KiB was too short). */
#ifndef PF_BYTES
#define PF_BYTES 8192
#endif

#if FDL_HAVE_AVX2_TARGET
/* Consecutive blocks, software-pipelined: pass 1 of block b+1 (streaming from
 * memory) runs in the same loop as pass 2 of block b (from L1), so memory
 * traffic never pauses for the compute.  NL = 4 * W lanes; each lane sees its
 * terms in the same order as in the scalar twin, and lanes are reduced with
 * the same tree (in registers unless the block has a scalar tail), so every
 * block's result equals moments_<SFX>_scalar's bitwise. */
#define BLOCKS_AVX2(SFX, T, VT, W, LOAD, STORE, ADD, SUB, MUL, ZERO, SET1, RARR, RVEC)     \
FDL_TARGET_AVX2 static void blocks_##SFX##_avx2(const T *x, int64_t n, int64_t block,     \
                                                double *mean, double *m2) {               \
    const int64_t NL = 4 * W;                                                             \
    int64_t nb = (n + block - 1) / block, i;                                              \
    VT a[4], s[4], c[4];                                                                  \
    T acc[4 * W], sq[4 * W], dv[4 * W];                                                   \
    int64_t lc = n < block ? n : block, lcv = lc & ~(NL - 1);                             \
    for (int j = 0; j < 4; j++) a[j] = ZERO();                                            \
    for (i = 0; i < lcv; i += NL)                                                         \
        for (int j = 0; j < 4; j++) a[j] = ADD(a[j], LOAD(x + i + W * j));                \
    if (lc != lcv) {                                                                      \
        for (int j = 0; j < 4; j++) STORE(acc + W * j, a[j]);                             \
        for (; i < lc; i++) acc[i & (NL - 1)] += x[i];                                    \
    }                                                                                     \
    for (int64_t b = 0; b < nb; b++) {                                                    \
        const T *cur = x + b * block, *nxt = cur + block;                                 \
        int64_t rest = n - (b + 1) * block;                                               \
        int64_t ln = b + 1 < nb ? (rest < block ? rest : block) : 0;                      \
        int64_t lnv = ln & ~(NL - 1), both = lcv < lnv ? lcv : lnv;                       \
        T K = (T)((lc == lcv ? RVEC(a) : RARR(acc)) / (double)lc);                        \
        VT kv = SET1(K);                                                                  \
        for (int j = 0; j < 4; j++) a[j] = s[j] = c[j] = ZERO();                          \
        for (i = 0; i < both; i += NL) {                                                  \
            _mm_prefetch((const char *)(nxt + i) + PF_BYTES, _MM_HINT_T0);                \
            _mm_prefetch((const char *)(nxt + i) + PF_BYTES + 64, _MM_HINT_T0);           \
            for (int j = 0; j < 4; j++) {                                                 \
                a[j] = ADD(a[j], LOAD(nxt + i + W * j));                                  \
                VT d = SUB(LOAD(cur + i + W * j), kv);                                    \
                s[j] = ADD(s[j], MUL(d, d));   /* no FMA: twin rounding */                \
                c[j] = ADD(c[j], d);                                                      \
            }                                                                             \
        }                                                                                 \
        for (int64_t k = i; k < lcv; k += NL)                                             \
            for (int j = 0; j < 4; j++) {                                                 \
                VT d = SUB(LOAD(cur + k + W * j), kv);                                    \
                s[j] = ADD(s[j], MUL(d, d));                                              \
                c[j] = ADD(c[j], d);                                                      \
            }                                                                             \
        for (int64_t k = i; k < lnv; k += NL)                                             \
            for (int j = 0; j < 4; j++) a[j] = ADD(a[j], LOAD(nxt + k + W * j));          \
        double s1, s2;                                                                    \
        if (lc == lcv) {                                                                  \
            s1 = RVEC(c);                                                                 \
            s2 = RVEC(s);                                                                 \
        } else {                                                                          \
            for (int j = 0; j < 4; j++) {                                                 \
                STORE(sq + W * j, s[j]);                                                  \
                STORE(dv + W * j, c[j]);                                                  \
            }                                                                             \
            for (int64_t k = lcv; k < lc; k++) {                                          \
                T d = cur[k] - K;                                                         \
                sq[k & (NL - 1)] += d * d;                                                \
                dv[k & (NL - 1)] += d;                                                    \
            }                                                                             \
            s1 = RARR(dv);                                                                \
            s2 = RARR(sq);                                                                \
        }                                                                                 \
        mean[b] = shifted_mean((double)K, s1, lc);                                        \
        finish(s2, s1, lc, &m2[b]);                                                       \
        if (ln != lnv) {                                                                  \
            for (int j = 0; j < 4; j++) STORE(acc + W * j, a[j]);                         \
            for (i = lnv; i < ln; i++) acc[i & (NL - 1)] += nxt[i];                       \
        }                                                                                 \
        lc = ln;                                                                          \
        lcv = lnv;                                                                        \
    }                                                                                     \
}
BLOCKS_AVX2(f32, float, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_add_ps,
            _mm256_sub_ps, _mm256_mul_ps, _mm256_setzero_ps, _mm256_set1_ps, reduce32f,
            reduce32f_avx2)
BLOCKS_AVX2(f64, double, __m256d, 4, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_add_pd,
            _mm256_sub_pd, _mm256_mul_pd, _mm256_setzero_pd, _mm256_set1_pd, reduce16,
            reduce16_avx2)
#define BLOCKS_AVX2_CALL(SFX) if (level >= FDL_SIMD_AVX2) { blocks_##SFX##_avx2(x, n, block, mean, m2); return; }
#else
#define BLOCKS_AVX2_CALL(SFX)
#endif

#define BLOCKS(SFX, T)                                                                    \
void fdl_moments_blocks_##SFX(const T *x, int64_t n, int64_t block, int level,            \
                              double *mean, double *m2) {                                 \
    if (n <= 0) return;                                                                   \
    BLOCKS_AVX2_CALL(SFX)                                                                 \
    (void)level;                                                                          \
    for (int64_t b = 0; b * block < n; b++) {                                             \
        int64_t ln = n - b * block < block ? n - b * block : block;                       \
        moments_##SFX##_scalar(x + b * block, ln, &mean[b], &m2[b]);                      \
    }                                                                                     \
}
BLOCKS(f32, float)
BLOCKS(f64, double)

/* ---- column path: batch statistics over a short spatial extent ----
 * A chunk is a (rows, L = C*S) row-major block.  Per column j, pass 1 sums the
 * rows and pass 2 sums d = x - K_c and d^2 (K_c: the chunk's pass-1 mean of
 * channel c), each column adding its rows in order in the input's precision
 * (rows is capped, see _norm_stats.pyx); columns are then combined per
 * channel in double.  Every variant below keeps that per-column order and
 * never fuses a multiply-add, so all of them round identically.
 *
 * Pass 1 runs row-major (the chunk streams in memory order into column
 * accumulators in L1).  Rows are often a page or more apart in the stream,
 * where hardware prefetchers stop, so it prefetches COL_PF_BYTES ahead.
 * Pass 2 (chunk in L2) keeps strips of columns in registers when there are
 * at least COL_STRIP_MIN columns, avoiding a load and a store of two
 * accumulators per element; with fewer it runs row-major too. */
#define COL_PF_BYTES 8192
#define COL_STRIP_MIN 32
static inline void col_prefetch(const void *p, int64_t nbytes) {
    for (int64_t b = 0; b < nbytes; b += 64)
        __builtin_prefetch((const char *)p + b, 0, 3);
}

#define COL_PASSES(SFX, T, ATTR, ISA)                                         \
ATTR static void colsum_##SFX##_##ISA(const T *x, int64_t rows, int64_t L, T *col) { \
    for (int64_t j = 0; j < L; j++) col[j] = 0;                              \
    for (int64_t r = 0; r < rows; r++) {                                     \
        col_prefetch(x + r * L + COL_PF_BYTES / sizeof(T), L * sizeof(T));   \
        for (int64_t j = 0; j < L; j++) col[j] += x[r * L + j];             \
    }                                                                        \
}                                                                            \
ATTR static void coldev_##SFX##_##ISA(const T *x, int64_t rows, int64_t L,   \
                                      const T *kc, T *sq, T *dv) {           \
    for (int64_t j = 0; j < L; j++) sq[j] = dv[j] = 0;                       \
    for (int64_t r = 0; r < rows; r++)                                       \
        for (int64_t j = 0; j < L; j++) {                                    \
            T d = x[r * L + j] - kc[j];                                      \
            sq[j] += d * d;                                                  \
            dv[j] += d;                                                      \
        }                                                                    \
}
/* baseline and AVX2 builds of the same source (vectorized across columns) */
COL_PASSES(f32, float, , scalar)
COL_PASSES(f64, double, , scalar)
#if FDL_HAVE_AVX2_TARGET
COL_PASSES(f32, float, FDL_TARGET_AVX2, avx2)
COL_PASSES(f64, double, FDL_TARGET_AVX2, avx2)
/* pass 2 on strips of 4 vectors of W columns held in registers over all rows */
#define COL_STRIP(SFX, T, VT, W, LOAD, STORE, ADD, SUB, MUL, ZERO)               \
FDL_TARGET_AVX2 static void coldev_##SFX##_strip(const T *x, int64_t rows,        \
                                                int64_t L, const T *kc, T *sq,   \
                                                T *dv) {                         \
    int64_t j = 0;                                                               \
    for (; j + 4 * W <= L; j += 4 * W) {                                         \
        VT k4[4], s[4], c[4];                                                    \
        for (int k = 0; k < 4; k++) {                                            \
            k4[k] = LOAD(kc + j + W * k);                                        \
            s[k] = c[k] = ZERO();                                                \
        }                                                                        \
        for (int64_t r = 0; r < rows; r++)                                       \
            for (int k = 0; k < 4; k++) {                                        \
                VT d = SUB(LOAD(x + r * L + j + W * k), k4[k]);                  \
                s[k] = ADD(s[k], MUL(d, d));                                     \
                c[k] = ADD(c[k], d);                                             \
            }                                                                    \
        for (int k = 0; k < 4; k++) {                                            \
            STORE(sq + j + W * k, s[k]);                                         \
            STORE(dv + j + W * k, c[k]);                                         \
        }                                                                        \
    }                                                                            \
    for (; j < L; j++) {                                                         \
        T s = 0, c = 0;                                                          \
        for (int64_t r = 0; r < rows; r++) {                                     \
            T d = x[r * L + j] - kc[j];                                          \
            s += d * d;                                                          \
            c += d;                                                              \
        }                                                                        \
        sq[j] = s;                                                               \
        dv[j] = c;                                                               \
    }                                                                            \
}
COL_STRIP(f32, float, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_add_ps,
         _mm256_sub_ps, _mm256_mul_ps, _mm256_setzero_ps)
COL_STRIP(f64, double, __m256d, 4, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_add_pd,
         _mm256_sub_pd, _mm256_mul_pd, _mm256_setzero_pd)
#define COL_PASS(FN, SFX, level) ((level) >= FDL_SIMD_AVX2 ? FN##_##SFX##_avx2 : FN##_##SFX##_scalar)
#define COLDEV_PASS(SFX, level, L) ((level) < FDL_SIMD_AVX2 ? coldev_##SFX##_scalar : \
                                    (L) >= COL_STRIP_MIN ? coldev_##SFX##_strip : coldev_##SFX##_avx2)
#else
#define COL_PASS(FN, SFX, level) ((void)(level), FN##_##SFX##_scalar)
#define COLDEV_PASS(SFX, level, L) ((void)(level), coldev_##SFX##_scalar)
#endif

#define COLMOMENTS(SFX, T)                                                       \
void fdl_colmoments_##SFX(const T *x, int64_t rows, int64_t C, int64_t S,        \
                          int level, T *work, double *mean, double *m2) {        \
    int64_t L = C * S;                                                           \
    T *col = work, *kc = work + L, *sq = work + 2 * L, *dv = work + 3 * L;       \
    double cnt = (double)(rows * S), inv = 1.0 / cnt;                            \
    COL_PASS(colsum, SFX, level)(x, rows, L, col);                               \
    for (int64_t c = 0; c < C; c++) {                                            \
        double t = 0.0;                                                          \
        for (int64_t s = 0; s < S; s++) t += (double)col[c * S + s];             \
        T K = (T)(t * inv);                                                      \
        for (int64_t s = 0; s < S; s++) kc[c * S + s] = K;                       \
    }                                                                            \
    COLDEV_PASS(SFX, level, L)(x, rows, L, kc, sq, dv);                          \
    for (int64_t c = 0; c < C; c++) {                                            \
        double s2 = 0.0, s1 = 0.0;                                               \
        for (int64_t s = 0; s < S; s++) {                                        \
            s2 += (double)sq[c * S + s];                                         \
            s1 += (double)dv[c * S + s];                                         \
        }                                                                        \
        mean[c] = isfinite(kc[c * S]) ? (double)kc[c * S] + s1 * inv : (double)kc[c * S]; \
        finish(s2, s1, rows * S, &m2[c]);                                        \
    }                                                                            \
}
COLMOMENTS(f32, float)
COLMOMENTS(f64, double)

/* ---- float16 ---- */

#define F16_BLOCK (FDL_BLOCK_BYTES / 4)

void fdl_moments_blocks_f16(const uint16_t *x, int64_t n, int64_t block, int level,
                            double *mean, double *m2) {
    float xs[F16_BLOCK] __attribute__((aligned(64)));
    for (int64_t b = 0; b * block < n; b++) {
        int64_t ln = n - b * block < block ? n - b * block : block;
        fdl_h2f_row(x + b * block, xs, ln, level);
        fdl_moments_blocks_f32(xs, ln, ln, level, &mean[b], &m2[b]);
    }
}

/* The two column passes of fdl_colmoments_f32 on float16 rows converted a
 * chunk at a time; each column adds its rows in the same order as there, and
 * no multiply-add is fused, so the sums are bitwise the float32 ones. */
#define COL16_PASSES(ATTR, ISA)                                                       \
ATTR static void colsum16_##ISA(const uint16_t *x, int64_t rows, int64_t L, float *col, \
                                int level) {                                          \
    float xs[F16_BLOCK] __attribute__((aligned(64)));                                 \
    for (int64_t j = 0; j < L; j++) col[j] = 0;                                       \
    for (int64_t r = 0; r < rows; r++)                                                \
        for (int64_t j0 = 0; j0 < L; j0 += F16_BLOCK) {                               \
            int64_t m = L - j0 < F16_BLOCK ? L - j0 : F16_BLOCK;                      \
            fdl_h2f_row(x + r * L + j0, xs, m, level);                                \
            for (int64_t j = 0; j < m; j++) col[j0 + j] += xs[j];                     \
        }                                                                             \
}                                                                                     \
ATTR static void coldev16_##ISA(const uint16_t *x, int64_t rows, int64_t L,           \
                                const float *kc, float *sq, float *dv, int level) {   \
    float xs[F16_BLOCK] __attribute__((aligned(64)));                                 \
    for (int64_t j = 0; j < L; j++) sq[j] = dv[j] = 0;                                \
    for (int64_t r = 0; r < rows; r++)                                                \
        for (int64_t j0 = 0; j0 < L; j0 += F16_BLOCK) {                               \
            int64_t m = L - j0 < F16_BLOCK ? L - j0 : F16_BLOCK;                      \
            fdl_h2f_row(x + r * L + j0, xs, m, level);                                \
            for (int64_t j = 0; j < m; j++) {                                         \
                float d = xs[j] - kc[j0 + j];                                         \
                sq[j0 + j] += d * d;                                                  \
                dv[j0 + j] += d;                                                      \
            }                                                                         \
        }                                                                             \
}
COL16_PASSES(, scalar)
#if FDL_HAVE_AVX2_TARGET
COL16_PASSES(FDL_TARGET_AVX2, avx2)
#define COL16(FN, level) ((level) >= FDL_SIMD_AVX2 ? FN##16_avx2 : FN##16_scalar)
#else
#define COL16(FN, level) FN##16_scalar
#endif

void fdl_colmoments_f16(const uint16_t *x, int64_t rows, int64_t C, int64_t S, int level,
                        float *work, double *mean, double *m2) {
    int64_t L = C * S;
    float *col = work, *kc = work + L, *sq = work + 2 * L, *dv = work + 3 * L;
    double cnt = (double)(rows * S), inv = 1.0 / cnt;
    COL16(colsum, level)(x, rows, L, col, level);
    for (int64_t c = 0; c < C; c++) {
        double t = 0.0;
        for (int64_t s = 0; s < S; s++) t += (double)col[c * S + s];
        float K = (float)(t * inv);
        for (int64_t s = 0; s < S; s++) kc[c * S + s] = K;
    }
    COL16(coldev, level)(x, rows, L, kc, sq, dv, level);
    for (int64_t c = 0; c < C; c++) {
        double s2 = 0.0, s1 = 0.0;
        for (int64_t s = 0; s < S; s++) {
            s2 += (double)sq[c * S + s];
            s1 += (double)dv[c * S + s];
        }
        mean[c] = isfinite(kc[c * S]) ? (double)kc[c * S] + s1 * inv : (double)kc[c * S];
        finish(s2, s1, rows * S, &m2[c]);
    }
}
