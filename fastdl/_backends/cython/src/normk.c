#include "normk.h"
#include "moments.h"
#include "simd.h"

#include <math.h>
#include <string.h>

#define NK_CAT3(a, b, c) a##_##b##_##c
#define NK_XCAT3(a, b, c) NK_CAT3(a, b, c)
#define NK(name) NK_XCAT3(name, NK_SFX, NK_ISA)

/* Non-temporal store of one 64-byte line to d from t (both 64-byte aligned). */
#if defined(__x86_64__) || defined(__SSE2__)
#include <emmintrin.h>
#define NK_SFENCE() _mm_sfence()
static inline void stream_f32_sse2(float *d, const float *t) {
    for (int k = 0; k < 16; k += 4) _mm_stream_ps(d + k, _mm_load_ps(t + k));
}
static inline void stream_f64_sse2(double *d, const double *t) {
    for (int k = 0; k < 8; k += 2) _mm_stream_pd(d + k, _mm_load_pd(t + k));
}
#define NK_STREAM_F32 stream_f32_sse2
#define NK_STREAM_F64 stream_f64_sse2
#else
#define NK_SFENCE() ((void)0)
static inline void stream_f32_plain(float *d, const float *t) { memcpy(d, t, 64); }
static inline void stream_f64_plain(double *d, const double *t) { memcpy(d, t, 64); }
#define NK_STREAM_F32 stream_f32_plain
#define NK_STREAM_F64 stream_f64_plain
#endif

/* baseline builds */
#define ATTR
#define NK_ISA scalar
#include "normk_types.h"
#undef ATTR
#undef NK_ISA

#if FDL_HAVE_AVX2_TARGET
FDL_TARGET_AVX2 static inline void stream_f32_avx2(float *d, const float *t) {
    _mm256_stream_ps(d, _mm256_load_ps(t));
    _mm256_stream_ps(d + 8, _mm256_load_ps(t + 8));
}
FDL_TARGET_AVX2 static inline void stream_f64_avx2(double *d, const double *t) {
    _mm256_stream_pd(d, _mm256_load_pd(t));
    _mm256_stream_pd(d + 4, _mm256_load_pd(t + 4));
}
#undef NK_STREAM_F32
#undef NK_STREAM_F64
#define NK_STREAM_F32 stream_f32_avx2
#define NK_STREAM_F64 stream_f64_avx2
#define ATTR FDL_TARGET_AVX2
#define NK_ISA avx2
#define NK_SKIP_REDUCTIONS
#include "normk_types.h"
#undef NK_SKIP_REDUCTIONS
#undef ATTR
#undef NK_ISA
#endif

#if FDL_HAVE_AVX2_TARGET
/* ---- AVX2 reductions ----
 * The reductions are written with intrinsics: the compiler's vectorization
 * of the template versions was fragile (adding a prefetch to the loop made
 * it scalar), and these loops prefetch.  Lane k of each accumulator array
 * holds the same terms, added in the same order, as lane k of the template
 * (its scalar twin); the tails repeat the template's loops and the lanes are
 * reduced by the template's own lanes_*_avx2, so the results agree bitwise.
 * Both inputs are requested AHEAD_BYTES ahead: hardware prefetchers restart
 * at every page (~25% faster on the project's machines). */
#define AHEAD_BYTES 2048
#define AHEAD(p) _mm_prefetch((const char *)(p) + AHEAD_BYTES, _MM_HINT_T0)

#define AVX2_SUMS(SFX, T, VT, W, LOAD, STORE, ADD, SUB, MUL, SET1, ZERO)                   \
FDL_TARGET_AVX2 static double sumsq_##SFX##_avx2i(const T *restrict x, int64_t n) {        \
    enum { NLc = 2 * W, L = 4 * W };                                                       \
    double tot = 0.0;                                                                      \
    for (int64_t i0 = 0; i0 < n; i0 += NK_FLUSH) {                                         \
        int64_t i1 = n - i0 < NK_FLUSH ? n : i0 + NK_FLUSH, i = i0;                        \
        VT a[4] = {ZERO(), ZERO(), ZERO(), ZERO()};                                        \
        T arr[L];                                                                          \
        for (; i + L <= i1; i += L) {                                                      \
            AHEAD(x + i);                                                                  \
            AHEAD(x + i + W * 2);                                                          \
            for (int j = 0; j < 4; j++) {                                                  \
                VT v = LOAD(x + i + j * W);                                                \
                a[j] = ADD(a[j], MUL(v, v));                                               \
            }                                                                              \
        }                                                                                  \
        for (int j = 0; j < 4; j++) STORE(arr + j * W, a[j]);                              \
        for (; i < i1; i++) arr[i & (L - 1)] += x[i] * x[i];                               \
        tot += lanes_##SFX##_avx2(arr) + lanes_##SFX##_avx2(arr + NLc);                        \
    }                                                                                      \
    return tot;                                                                            \
}                                                                                          \
                                                                                           \
FDL_TARGET_AVX2 static void row_sums_##SFX##_avx2i(                                         \
        const T *restrict dy, const T *restrict x, int64_t n, T mh, T ml, T r,             \
        const T *restrict w, T *restrict dwp, T *restrict dbp, double *s1, double *s2) {   \
    enum { L = 2 * W };                                                                    \
    VT vmh = SET1(mh), vml = SET1(ml), vr = SET1(r);                                       \
    double t1 = 0.0, t2 = 0.0;                                                             \
    for (int64_t i0 = 0; i0 < n; i0 += NK_FLUSH) {                                         \
        int64_t i1 = n - i0 < NK_FLUSH ? n : i0 + NK_FLUSH, i = i0;                        \
        VT a1[2] = {ZERO(), ZERO()}, a2[2] = {ZERO(), ZERO()};                             \
        T b1[L], b2[L];                                                                    \
        for (; i + L <= i1; i += L) {                                                      \
            AHEAD(dy + i);                                                                 \
            AHEAD(x + i);                                                                  \
            for (int j = 0; j < 2; j++) {                                                  \
                int64_t o = i + j * W;                                                     \
                VT d = LOAD(dy + o);                                                       \
                VT xh = MUL(SUB(SUB(LOAD(x + o), vmh), vml), vr);                          \
                VT g = MUL(d, LOAD(w + o));                                                \
                a1[j] = ADD(a1[j], g);                                                     \
                a2[j] = ADD(a2[j], MUL(g, xh));                                            \
                STORE(dwp + o, ADD(LOAD(dwp + o), MUL(d, xh)));                            \
                STORE(dbp + o, ADD(LOAD(dbp + o), d));                                     \
            }                                                                              \
        }                                                                                  \
        for (int j = 0; j < 2; j++) {                                                      \
            STORE(b1 + j * W, a1[j]);                                                      \
            STORE(b2 + j * W, a2[j]);                                                      \
        }                                                                                  \
        for (; i < i1; i++) {                                                              \
            T xh = ((x[i] - mh) - ml) * r, d = dy[i], g = d * w[i];                        \
            b1[i & (L - 1)] += g;                                                          \
            b2[i & (L - 1)] += g * xh;                                                     \
            dwp[i] += d * xh;                                                              \
            dbp[i] += d;                                                                   \
        }                                                                                  \
        t1 += lanes_##SFX##_avx2(b1);                                                          \
        t2 += lanes_##SFX##_avx2(b2);                                                          \
    }                                                                                      \
    *s1 = t1;                                                                              \
    *s2 = t2;                                                                              \
}                                                                                          \
                                                                                           \
FDL_TARGET_AVX2 static double rms_sums_##SFX##_avx2i(                                       \
        const T *restrict dy, const T *restrict x, int64_t n, T r, const T *restrict w,    \
        T *restrict dwp) {                                                                 \
    enum { L = 2 * W };                                                                    \
    VT vr = SET1(r);                                                                       \
    double t2 = 0.0;                                                                       \
    for (int64_t i0 = 0; i0 < n; i0 += NK_FLUSH) {                                         \
        int64_t i1 = n - i0 < NK_FLUSH ? n : i0 + NK_FLUSH, i = i0;                        \
        VT a2[2] = {ZERO(), ZERO()};                                                       \
        T b2[L];                                                                           \
        for (; i + L <= i1; i += L) {                                                      \
            AHEAD(dy + i);                                                                 \
            AHEAD(x + i);                                                                  \
            for (int j = 0; j < 2; j++) {                                                  \
                int64_t o = i + j * W;                                                     \
                VT d = LOAD(dy + o), xh = MUL(LOAD(x + o), vr);                            \
                a2[j] = ADD(a2[j], MUL(MUL(d, LOAD(w + o)), xh));                          \
                STORE(dwp + o, ADD(LOAD(dwp + o), MUL(d, xh)));                            \
            }                                                                              \
        }                                                                                  \
        for (int j = 0; j < 2; j++) STORE(b2 + j * W, a2[j]);                              \
        for (; i < i1; i++) {                                                              \
            T xh = x[i] * r, d = dy[i];                                                    \
            b2[i & (L - 1)] += d * w[i] * xh;                                              \
            dwp[i] += d * xh;                                                              \
        }                                                                                  \
        t2 += lanes_##SFX##_avx2(b2);                                                          \
    }                                                                                      \
    return t2;                                                                             \
}                                                                                          \
                                                                                           \
FDL_TARGET_AVX2 static void seg_sums_##SFX##_avx2i(                                         \
        const T *restrict dy, const T *restrict x, int64_t n, T mh, T ml, T r,             \
        double *A, double *B) {                                                            \
    enum { L = 2 * W };                                                                    \
    VT vmh = SET1(mh), vml = SET1(ml), vr = SET1(r);                                       \
    double tA = 0.0, tB = 0.0;                                                             \
    for (int64_t i0 = 0; i0 < n; i0 += NK_FLUSH) {                                         \
        int64_t i1 = n - i0 < NK_FLUSH ? n : i0 + NK_FLUSH, i = i0;                        \
        VT a[2] = {ZERO(), ZERO()}, b[2] = {ZERO(), ZERO()};                               \
        T ba[L], bb[L];                                                                    \
        for (; i + L <= i1; i += L) {                                                      \
            AHEAD(dy + i);                                                                 \
            AHEAD(x + i);                                                                  \
            for (int j = 0; j < 2; j++) {                                                  \
                int64_t o = i + j * W;                                                     \
                VT d = LOAD(dy + o);                                                       \
                a[j] = ADD(a[j], MUL(d, MUL(SUB(SUB(LOAD(x + o), vmh), vml), vr)));        \
                b[j] = ADD(b[j], d);                                                       \
            }                                                                              \
        }                                                                                  \
        for (int j = 0; j < 2; j++) {                                                      \
            STORE(ba + j * W, a[j]);                                                       \
            STORE(bb + j * W, b[j]);                                                       \
        }                                                                                  \
        for (; i < i1; i++) {                                                              \
            ba[i & (L - 1)] += dy[i] * (((x[i] - mh) - ml) * r);                           \
            bb[i & (L - 1)] += dy[i];                                                      \
        }                                                                                  \
        tA += lanes_##SFX##_avx2(ba);                                                          \
        tB += lanes_##SFX##_avx2(bb);                                                          \
    }                                                                                      \
    *A += tA;                                                                              \
    *B += tB;                                                                              \
}
AVX2_SUMS(f32, float, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_add_ps,
          _mm256_sub_ps, _mm256_mul_ps, _mm256_set1_ps, _mm256_setzero_ps)
AVX2_SUMS(f64, double, __m256d, 4, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_add_pd,
          _mm256_sub_pd, _mm256_mul_pd, _mm256_set1_pd, _mm256_setzero_pd)
#endif

/* RED names the build of the four reductions (the AVX2 table uses the
 * intrinsics versions, "avx2i"). */
#define NK_TABLE(SFX, ISA, RED)                                                     \
    { sumsq_##SFX##_##RED, apply_row_##SFX##_##ISA, apply_rms_##SFX##_##ISA,        \
      apply_chan_##SFX##_##ISA, apply_cols_##SFX##_##ISA, row_sums_##SFX##_##RED,   \
      row_dx_##SFX##_##ISA, rms_sums_##SFX##_##RED, rms_dx_##SFX##_##ISA,           \
      seg_sums_##SFX##_##RED, seg_dx_##SFX##_##ISA, col_sums_##SFX##_##ISA,         \
      col_dx_##SFX##_##ISA, seg_scale_##SFX##_##ISA, col_scale_##SFX##_##ISA }

static const fdl_nk_f32 f32_scalar = NK_TABLE(f32, scalar, scalar);
static const fdl_nk_f64 f64_scalar = NK_TABLE(f64, scalar, scalar);
#if FDL_HAVE_AVX2_TARGET
static const fdl_nk_f32 f32_avx2 = NK_TABLE(f32, avx2, avx2i);
static const fdl_nk_f64 f64_avx2 = NK_TABLE(f64, avx2, avx2i);
#endif

const fdl_nk_f32 *fdl_nk_f32_table(int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX2) return &f32_avx2;
#endif
    (void)level;
    return &f32_scalar;
}

const fdl_nk_f64 *fdl_nk_f64_table(int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX2) return &f64_avx2;
#endif
    (void)level;
    return &f64_scalar;
}

/* ---- moments of long rows and of strided segments ---- */

#define ROW_RUN FDL_ROW_RUN

/* Segments are often a page or less, far apart: hardware prefetchers stop
 * at page boundaries, so the next segment is requested while this one is
 * summed (up to SEG_PF_BYTES of it). */
#define SEG_PF_BYTES 16384
void fdl_prefetch(const void *p, int64_t nbytes) {
    const char *c = (const char *)p;
    if (nbytes > SEG_PF_BYTES) nbytes = SEG_PF_BYTES;
    for (int64_t i = 0; i < nbytes; i += 64) __builtin_prefetch(c + i);
}

#define merge_tree fdl_merge_tree

#define ROW_MOMENTS(SFX, T)                                                               \
/* One row of any length: blocks in runs of ROW_RUN, merged in a fixed order. */          \
static void row_moments_##SFX(const T *x, int64_t n, int level, double *mean,             \
                              double *m2) {                                               \
    const int64_t blk = FDL_BLOCK_BYTES / (int64_t)sizeof(T);                             \
    double tn = 0, tm = 0, tq = 0;                                                        \
    double cnt[ROW_RUN], mu[ROW_RUN], q[ROW_RUN];                                         \
    for (int64_t off = 0; off < n; off += ROW_RUN * blk) {                                \
        int64_t len = n - off < ROW_RUN * blk ? n - off : ROW_RUN * blk;                  \
        int64_t nb = (len + blk - 1) / blk;                                               \
        fdl_moments_blocks_##SFX(x + off, len, blk, level, mu, q);                        \
        for (int64_t b = 0; b < nb; b++)                                                  \
            cnt[b] = (double)(len - b * blk < blk ? len - b * blk : blk);                 \
        merge_tree(cnt, mu, q, nb);                                                       \
        fdl_chan(&tn, &tm, &tq, cnt[0], mu[0], q[0]);                                     \
    }                                                                                     \
    *mean = tm;                                                                           \
    *m2 = tq;                                                                             \
}                                                                                         \
                                                                                          \
void fdl_rows_moments_##SFX(const T *x, int64_t nrows, int64_t D, int level,              \
                            double *mean, double *m2) {                                   \
    if (D * (int64_t)sizeof(T) <= FDL_BLOCK_BYTES) {   /* one block per row, pipelined */ \
        fdl_moments_blocks_##SFX(x, nrows * D, D, level, mean, m2);                       \
        return;                                                                           \
    }                                                                                     \
    for (int64_t r = 0; r < nrows; r++)                                                   \
        row_moments_##SFX(x + r * D, D, level, &mean[r], &m2[r]);                         \
}                                                                                         \
                                                                                          \
void fdl_seg_moments_##SFX(const T *x, int64_t nseg, int64_t len, int64_t stride,         \
                           int level, double *work, double *mean, double *m2) {           \
    const int64_t blk = FDL_BLOCK_BYTES / (int64_t)sizeof(T);                                 \
    int64_t nb = (len + blk - 1) / blk, k = nseg * nb;                                    \
    double *cnt = work, *mu = work + k, *q = work + 2 * k;                                \
    for (int64_t s = 0; s < nseg; s++) {                                                  \
        if (s + 1 < nseg) fdl_prefetch(x + (s + 1) * stride, len * (int64_t)sizeof(T));  \
        fdl_moments_blocks_##SFX(x + s * stride, len, blk, level, mu + s * nb,            \
                                 q + s * nb);                                             \
        for (int64_t b = 0; b < nb; b++)                                                  \
            cnt[s * nb + b] = (double)(len - b * blk < blk ? len - b * blk : blk);        \
    }                                                                                     \
    if (k == 0) {                                                                         \
        *mean = *m2 = NAN;                                                                \
        return;                                                                           \
    }                                                                                     \
    merge_tree(cnt, mu, q, k);                                                            \
    *mean = mu[0];                                                                        \
    *m2 = q[0];                                                                           \
}
ROW_MOMENTS(f32, float)
ROW_MOMENTS(f64, double)

void fdl_sfence(void) { NK_SFENCE(); }

int64_t fdl_seg_moments_work(int64_t nseg, int64_t len, int64_t itemsize) {
    int64_t blk = FDL_BLOCK_BYTES / itemsize;
    return 3 * nseg * ((len + blk - 1) / blk);
}
