/* Decoding kernels: top-k heaps with an AVX2 threshold prefilter and the
 * log-sum-exp statistics with a polynomial exp (see decodek.h).
 *
 * Twins: every AVX2 function has a scalar twin with bitwise the same result.
 * The exp polynomials are evaluated with the same constants and the same fma
 * sequence (C99 fmaf/fma in the scalar twin, which are correctly rounded like
 * vfmadd), the range reduction uses the same magic-number rounding, and the
 * sums go to float64 accumulators in the same lane layout. */
#include "decodek.h"
#include "f16.h"
#include "simd.h"

#include <math.h>
#include <string.h>

/* ------------------------------------------------------------------ heaps */

/* Heaps hold keys, not values: key(v) is an unsigned integer increasing with
 * v, with -0.0 and +0.0 the same key and every NaN the largest key, so the
 * total order is "larger key, then lower index" and compares are branch-free.
 * The values are taken back from the input by index at the end. */
#define DK_HEAP_FUNCS(SFX, T, KT, UT, BITS)                                            \
static inline KT key_##SFX(T v) {                                                      \
    T w = v + (T)0;                     /* -0 -> +0 */                                 \
    KT b;                                                                              \
    memcpy(&b, &w, sizeof b);                                                          \
    KT m = (KT)((UT)b >> (BITS - 1));   /* all ones for negatives */                   \
    KT kk = b ^ (m | ((KT)1 << (BITS - 1)));                                           \
    return v != v ? ~(KT)0 : kk;                                                       \
}                                                                                      \
static inline T unkey_##SFX(KT kk) {                                                   \
    KT b = (kk >> (BITS - 1)) ? kk ^ ((KT)1 << (BITS - 1)) : ~kk;                      \
    T v;                                                                               \
    memcpy(&v, &b, sizeof v);                                                          \
    return v;                           /* the largest key gives a NaN */              \
}                                                                                      \
static inline int better_##SFX(KT ka, int64_t ia, KT kb, int64_t ib) {                 \
    return (ka > kb) | ((ka == kb) & (ia < ib));                                       \
}                                                                                      \
/* put (kv, i) at pos of a heap (root = worst) and restore the heap below */          \
static inline void sift_down_##SFX(KT *hk, int64_t *hi, int64_t size, int64_t pos,     \
                                   KT kv, int64_t i) {                                 \
    for (;;) {                                                                         \
        int64_t c = 2 * pos + 1;                                                       \
        if (c >= size) break;                                                          \
        if (c + 1 < size) c += better_##SFX(hk[c], hi[c], hk[c + 1], hi[c + 1]);       \
        if (!better_##SFX(kv, i, hk[c], hi[c])) break;                                 \
        hk[pos] = hk[c]; hi[pos] = hi[c]; pos = c;                                     \
    }                                                                                  \
    hk[pos] = kv; hi[pos] = i;                                                         \
}                                                                                      \
static inline int64_t push_##SFX(KT *hk, int64_t *hi, int64_t size, KT kv, int64_t i) {\
    int64_t pos = size;                                                                \
    while (pos > 0) {                                                                  \
        int64_t p = (pos - 1) >> 1;                                                    \
        if (!better_##SFX(hk[p], hi[p], kv, i)) break;                                 \
        hk[pos] = hk[p]; hi[pos] = hi[p]; pos = p;                                     \
    }                                                                                  \
    hk[pos] = kv; hi[pos] = i;                                                         \
    return size + 1;                                                                   \
}                                                                                      \
int64_t fdl_dk_merge_##SFX(KT *hk, int64_t *hi, int64_t size, int64_t k,               \
                           const KT *sk, const int64_t *si, int64_t n) {               \
    for (int64_t j = 0; j < n; j++) {                                                  \
        if (size < k) size = push_##SFX(hk, hi, size, sk[j], si[j]);                   \
        else if (better_##SFX(sk[j], si[j], hk[0], hi[0]))                             \
            sift_down_##SFX(hk, hi, size, 0, sk[j], si[j]);                            \
    }                                                                                  \
    return size;                                                                       \
}                                                                                      \
void fdl_dk_sort_##SFX(KT *hk, int64_t *hi, int64_t size) {                            \
    for (int64_t s = size - 1; s > 0; s--) {                                           \
        KT kv = hk[s]; int64_t i = hi[s];                                              \
        hk[s] = hk[0]; hi[s] = hi[0];                                                  \
        sift_down_##SFX(hk, hi, s, 0, kv, i);                                          \
    }                                                                                  \
}                                                                                      \
/* Scalar scan (the twin; also the AVX2 versions' head and tail).  Indices are   \
 * increasing, so v == root never enters; a NaN root ends the scan. */                 \
static inline int64_t scan_tail_##SFX(KT *hk, int64_t *hi, int64_t size, int64_t k,    \
                                      const T *x, int64_t i, int64_t n, T sub, T add,  \
                                      int has_add, int64_t base) {                     \
    for (; i < n && size < k; i++) {                                                   \
        T v = has_add ? (T)((T)(x[i] - sub) + add) : x[i];                                        \
        size = push_##SFX(hk, hi, size, key_##SFX(v), base + i);                       \
    }                                                                                  \
    if (i >= n) return size;                                                           \
    T thr = unkey_##SFX(hk[0]);                                                        \
    if (thr != thr) return size;                                                       \
    for (; i < n; i++) {                                                               \
        T v = has_add ? (T)((T)(x[i] - sub) + add) : x[i];                                        \
        if (!(v <= thr)) {                                                             \
            sift_down_##SFX(hk, hi, size, 0, key_##SFX(v), base + i);                  \
            thr = unkey_##SFX(hk[0]);                                                  \
            if (thr != thr) return size;                                               \
        }                                                                              \
    }                                                                                  \
    return size;                                                                       \
}

DK_HEAP_FUNCS(f32, float, uint32_t, int32_t, 32)
DK_HEAP_FUNCS(f64, double, uint64_t, int64_t, 64)

/* ------------------------------------------------------------------ exp */

/* float32: exp(d) for d <= 88; 0 below -86 (and for -inf / NaN: the kernels
 * flag NaN separately).  n = round(d*log2e) by the 1.5*2^23 trick, r = d - n*ln2
 * (two fma, Cephes split), e^r by the Cephes expf polynomial (max error about
 * 1 ulp), times 2^n by adding n to the exponent field. */
#define F32_LO (-86.0f)
#define F32_HI 88.0f
#define F32_MAGIC 12582912.0f
#define F32_LOG2E 1.44269504088896341f
#define F32_C1 0.693359375f
#define F32_C2 (-2.12194440e-4f)
#define F32_P0 1.9875691500e-4f
#define F32_P1 1.3981999507e-3f
#define F32_P2 8.3334519073e-3f
#define F32_P3 4.1665795894e-2f
#define F32_P4 1.6666665459e-1f
#define F32_P5 5.0000001201e-1f

/* _mm256_min/max_ps semantics: (a < b) ? a : b, (a > b) ? a : b */
static inline float minf_(float a, float b) { return a < b ? a : b; }
static inline float maxf_(float a, float b) { return a > b ? a : b; }
static inline double mind_(double a, double b) { return a < b ? a : b; }
static inline double maxd_(double a, double b) { return a > b ? a : b; }

/* core: valid for d0 <= F32_HI; below F32_LO it gives exp(F32_LO) (~4e-38; the
 * sums use it as is: invisible next to the max term 1) */
static inline float exp_f32_core_s(float d0) {
    float d = maxf_(d0, F32_LO);
    float t = fmaf(d, F32_LOG2E, F32_MAGIC);
    float nf = t - F32_MAGIC;
    float r = fmaf(-nf, F32_C1, d);
    r = fmaf(-nf, F32_C2, r);
    float z = r * r;
    float p = fmaf(F32_P0, r, F32_P1);
    p = fmaf(p, r, F32_P2);
    p = fmaf(p, r, F32_P3);
    p = fmaf(p, r, F32_P4);
    p = fmaf(p, r, F32_P5);
    float y = fmaf(p, z, r);
    y = y + 1.0f;
    uint32_t tb, yb;
    memcpy(&tb, &t, 4);
    memcpy(&yb, &y, 4);
    yb += tb << 23;
    memcpy(&y, &yb, 4);
    return y;
}

static inline float exp_f32_s(float d0) {
    float y = exp_f32_core_s(minf_(d0, F32_HI));
    return (d0 >= F32_LO) ? y : 0.0f;
}

/* float64: same scheme, 1.5*2^52 rounding, fdlibm ln2 split, Taylor degree 13
 * on |r| <= ln2/2 (truncation < 2e-18 relative); 0 below -708. */
#define F64_LO (-708.0)
#define F64_HI 709.0
#define F64_MAGIC 6755399441055744.0
#define F64_LOG2E 1.4426950408889634
#define F64_C1 6.93147180369123816490e-01
#define F64_C2 1.90821492927058770002e-10
#define F64_Q13 (1.0 / 6227020800.0)
#define F64_Q12 (1.0 / 479001600.0)
#define F64_Q11 (1.0 / 39916800.0)
#define F64_Q10 (1.0 / 3628800.0)
#define F64_Q9 (1.0 / 362880.0)
#define F64_Q8 (1.0 / 40320.0)
#define F64_Q7 (1.0 / 5040.0)
#define F64_Q6 (1.0 / 720.0)
#define F64_Q5 (1.0 / 120.0)
#define F64_Q4 (1.0 / 24.0)
#define F64_Q3 (1.0 / 6.0)
#define F64_Q2 0.5
#define F64_Q1 1.0

static inline double exp_f64_core_s(double d0) {
    double d = maxd_(d0, F64_LO);
    double t = fma(d, F64_LOG2E, F64_MAGIC);
    double nf = t - F64_MAGIC;
    double r = fma(-nf, F64_C1, d);
    r = fma(-nf, F64_C2, r);
    double p = fma(F64_Q13, r, F64_Q12);
    p = fma(p, r, F64_Q11);
    p = fma(p, r, F64_Q10);
    p = fma(p, r, F64_Q9);
    p = fma(p, r, F64_Q8);
    p = fma(p, r, F64_Q7);
    p = fma(p, r, F64_Q6);
    p = fma(p, r, F64_Q5);
    p = fma(p, r, F64_Q4);
    p = fma(p, r, F64_Q3);
    p = fma(p, r, F64_Q2);
    p = fma(p, r, F64_Q1);
    double y = fma(p, r, 1.0);
    uint64_t tb, yb;
    memcpy(&tb, &t, 8);
    memcpy(&yb, &y, 8);
    yb += tb << 52;
    memcpy(&y, &yb, 8);
    return y;
}

static inline double exp_f64_s(double d0) {
    double y = exp_f64_core_s(mind_(d0, F64_HI));
    return (d0 >= F64_LO) ? y : 0.0;
}

/* ------------------------------------------------------------- statistics */

/* Lane layout of the sums.  float32: per block of 32 elements, lane l (< 8)
 * adds in float32 (e[l] + e[l+8]) + (e[l+16] + e[l+24]) (a short partial sum,
 * error about 1 ulp like the exp itself) and accumulates that in float64;
 * float64: element i0 + l goes to accumulator l (< 16) per block of 16.  The
 * tail (< one block) goes to accumulators 0, 1, ... in turn; the accumulators
 * are summed 0..L-1. */
#define F32_BLOCK 32
#define F64_LANES 16

static inline void finish_stats(double mx, double *acc, int lanes, double *pm, double *ps) {
    double s = 0.0;
    for (int l = 0; l < lanes; l++) s += acc[l];
    *pm = mx;
    *ps = s;
}

/* max and NaN/+inf check; returns 0 when the sums must be skipped */
#define DK_STATS_PRE(SFX, T)                                                           \
static inline int stats_pre_##SFX(T mx, int nan, double *pm, double *ps, int *pbad) {  \
    *pm = (double)mx; *ps = 0.0; *pbad = 0;                                            \
    if (nan || mx == (T)INFINITY) { *pbad = 1; return 0; }                             \
    if (mx == -(T)INFINITY) return 0;                                                  \
    return 1;                                                                          \
}
DK_STATS_PRE(f32, float)
DK_STATS_PRE(f64, double)

static void stats_f32_scalar(const float *x, int64_t n, double *pm, double *ps, int *pbad) {
    float mx = -INFINITY;
    int nan = 0;
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        if (v != v) nan = 1;
        else if (v > mx) mx = v;
    }
    if (!stats_pre_f32(mx, nan, pm, ps, pbad)) return;
    double acc[8] = {0};
    int64_t i = 0;
    for (; i + F32_BLOCK <= n; i += F32_BLOCK)
        for (int l = 0; l < 8; l++) {
            const float *q = x + i + l;
            float f = (exp_f32_core_s(q[0] - mx) + exp_f32_core_s(q[8] - mx))
                    + (exp_f32_core_s(q[16] - mx) + exp_f32_core_s(q[24] - mx));
            acc[l] += (double)f;
        }
    for (int l = 0; i < n; i++, l = (l + 1) & 7) acc[l] += (double)exp_f32_core_s(x[i] - mx);
    finish_stats(mx, acc, 8, pm, ps);
}

static void stats_f64_scalar(const double *x, int64_t n, double *pm, double *ps, int *pbad) {
    double mx = -INFINITY;
    int nan = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = x[i];
        if (v != v) nan = 1;
        else if (v > mx) mx = v;
    }
    if (!stats_pre_f64(mx, nan, pm, ps, pbad)) return;
    double acc[F64_LANES] = {0};
    int64_t i = 0;
    for (; i + F64_LANES <= n; i += F64_LANES)
        for (int l = 0; l < F64_LANES; l++) acc[l] += exp_f64_core_s(x[i + l] - mx);
    for (int l = 0; i < n; i++, l++) acc[l] += exp_f64_core_s(x[i] - mx);
    finish_stats(mx, acc, F64_LANES, pm, ps);
}

/* --------------------------------------------------------------- AVX2 */
#if FDL_HAVE_AVX2_TARGET

FDL_TARGET_AVX2 static inline __m256 exp_f32_core_v(__m256 d0) {
    __m256 d = _mm256_max_ps(d0, _mm256_set1_ps(F32_LO));
    __m256 t = _mm256_fmadd_ps(d, _mm256_set1_ps(F32_LOG2E), _mm256_set1_ps(F32_MAGIC));
    __m256 nf = _mm256_sub_ps(t, _mm256_set1_ps(F32_MAGIC));
    __m256 r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(F32_C1), d);
    r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(F32_C2), r);
    __m256 z = _mm256_mul_ps(r, r);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(F32_P0), r, _mm256_set1_ps(F32_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(F32_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(F32_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(F32_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(F32_P5));
    __m256 y = _mm256_fmadd_ps(p, z, r);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_castps_si256(t), 23);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(y), e));
}

FDL_TARGET_AVX2 static inline __m256 exp_f32_v(__m256 d0) {
    __m256 y = exp_f32_core_v(_mm256_min_ps(d0, _mm256_set1_ps(F32_HI)));
    return _mm256_and_ps(y, _mm256_cmp_ps(d0, _mm256_set1_ps(F32_LO), _CMP_GE_OQ));
}

FDL_TARGET_AVX2 static inline __m256d exp_f64_core_v(__m256d d0) {
    __m256d d = _mm256_max_pd(d0, _mm256_set1_pd(F64_LO));
    __m256d t = _mm256_fmadd_pd(d, _mm256_set1_pd(F64_LOG2E), _mm256_set1_pd(F64_MAGIC));
    __m256d nf = _mm256_sub_pd(t, _mm256_set1_pd(F64_MAGIC));
    __m256d r = _mm256_fnmadd_pd(nf, _mm256_set1_pd(F64_C1), d);
    r = _mm256_fnmadd_pd(nf, _mm256_set1_pd(F64_C2), r);
    __m256d p = _mm256_fmadd_pd(_mm256_set1_pd(F64_Q13), r, _mm256_set1_pd(F64_Q12));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(F64_Q11));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(F64_Q10));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(F64_Q9));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(F64_Q8));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(F64_Q7));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(F64_Q6));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(F64_Q5));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(F64_Q4));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(F64_Q3));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(F64_Q2));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(F64_Q1));
    __m256d y = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0));
    __m256i e = _mm256_slli_epi64(_mm256_castpd_si256(t), 52);
    return _mm256_castsi256_pd(_mm256_add_epi64(_mm256_castpd_si256(y), e));
}

FDL_TARGET_AVX2 static inline __m256d exp_f64_v(__m256d d0) {
    __m256d y = exp_f64_core_v(_mm256_min_pd(d0, _mm256_set1_pd(F64_HI)));
    return _mm256_and_pd(y, _mm256_cmp_pd(d0, _mm256_set1_pd(F64_LO), _CMP_GE_OQ));
}

FDL_TARGET_AVX2 static inline float hmax_ps(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

FDL_TARGET_AVX2 static inline double hmax_pd(__m256d v) {
    __m128d m = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    m = _mm_max_sd(m, _mm_unpackhi_pd(m, m));
    return _mm_cvtsd_f64(m);
}

FDL_TARGET_AVX2 static void stats_f32_avx2(const float *x, int64_t n, double *pm, double *ps,
                                           int *pbad) {
    __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
    __m256 u = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        __m256 c = _mm256_loadu_ps(x + i + 16), d = _mm256_loadu_ps(x + i + 24);
        m0 = _mm256_max_ps(m0, a); m1 = _mm256_max_ps(m1, b);
        m2 = _mm256_max_ps(m2, c); m3 = _mm256_max_ps(m3, d);
        u = _mm256_or_ps(u, _mm256_or_ps(_mm256_cmp_ps(a, b, _CMP_UNORD_Q),
                                         _mm256_cmp_ps(c, d, _CMP_UNORD_Q)));
    }
    float mx = hmax_ps(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
    int nan = _mm256_movemask_ps(u) != 0;
    for (; i < n; i++) {
        float v = x[i];
        if (v != v) nan = 1;
        else if (v > mx) mx = v;
    }
    if (!stats_pre_f32(mx, nan, pm, ps, pbad)) return;
    __m256 mv = _mm256_set1_ps(mx);
    __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
    for (i = 0; i + F32_BLOCK <= n; i += F32_BLOCK) {
        __m256 e0 = exp_f32_core_v(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
        __m256 e1 = exp_f32_core_v(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), mv));
        __m256 e2 = exp_f32_core_v(_mm256_sub_ps(_mm256_loadu_ps(x + i + 16), mv));
        __m256 e3 = exp_f32_core_v(_mm256_sub_ps(_mm256_loadu_ps(x + i + 24), mv));
        __m256 f = _mm256_add_ps(_mm256_add_ps(e0, e1), _mm256_add_ps(e2, e3));
        lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(f)));
        hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
    }
    double a[8];
    _mm256_storeu_pd(a, lo);
    _mm256_storeu_pd(a + 4, hi);
    for (int l = 0; i < n; i++, l = (l + 1) & 7) a[l] += (double)exp_f32_core_s(x[i] - mx);
    finish_stats(mx, a, 8, pm, ps);
}

FDL_TARGET_AVX2 static void stats_f64_avx2(const double *x, int64_t n, double *pm, double *ps,
                                           int *pbad) {
    __m256d m0 = _mm256_set1_pd(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
    __m256d u = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256d a = _mm256_loadu_pd(x + i), b = _mm256_loadu_pd(x + i + 4);
        __m256d c = _mm256_loadu_pd(x + i + 8), d = _mm256_loadu_pd(x + i + 12);
        m0 = _mm256_max_pd(m0, a); m1 = _mm256_max_pd(m1, b);
        m2 = _mm256_max_pd(m2, c); m3 = _mm256_max_pd(m3, d);
        u = _mm256_or_pd(u, _mm256_or_pd(_mm256_cmp_pd(a, b, _CMP_UNORD_Q),
                                         _mm256_cmp_pd(c, d, _CMP_UNORD_Q)));
    }
    double mx = hmax_pd(_mm256_max_pd(_mm256_max_pd(m0, m1), _mm256_max_pd(m2, m3)));
    int nan = _mm256_movemask_pd(u) != 0;
    for (; i < n; i++) {
        double v = x[i];
        if (v != v) nan = 1;
        else if (v > mx) mx = v;
    }
    if (!stats_pre_f64(mx, nan, pm, ps, pbad)) return;
    __m256d mv = _mm256_set1_pd(mx);
    __m256d acc[4];
    for (int l = 0; l < 4; l++) acc[l] = _mm256_setzero_pd();
    for (i = 0; i + F64_LANES <= n; i += F64_LANES)
        for (int j = 0; j < 4; j++)
            acc[j] = _mm256_add_pd(acc[j],
                                   exp_f64_core_v(_mm256_sub_pd(_mm256_loadu_pd(x + i + 4 * j), mv)));
    double a[F64_LANES];
    for (int l = 0; l < 4; l++) _mm256_storeu_pd(a + 4 * l, acc[l]);
    for (int l = 0; i < n; i++, l++) a[l] += exp_f64_core_s(x[i] - mx);
    finish_stats(mx, a, F64_LANES, pm, ps);
}

/* Prefiltered top-k scans: 4 vectors per step compared with !(x <= thr)
 * (_CMP_NLE_UQ: NaN passes); lanes that pass go, in index order, to the exact
 * scalar replacement against the current root. */
#define DK_SCAN_AVX2(SFX, T, KT, VT, W, LOADU, SET1, ADD, SUB, CMP, OR, MOVEMASK)       \
FDL_TARGET_AVX2 static int64_t scan_##SFX##_avx2(KT *hv, int64_t *hi, int64_t size,     \
                                                 int64_t k, const T *x, int64_t n,      \
                                                 T sub, T add, int has_add,             \
                                                 int64_t base) {                        \
    int64_t i = 0;                                                                      \
    for (; i < n && size < k; i++) {                                                    \
        T v = has_add ? (T)((T)(x[i] - sub) + add) : x[i];                                         \
        size = push_##SFX(hv, hi, size, key_##SFX(v), base + i);                        \
    }                                                                                   \
    if (i >= n) return size;                                                            \
    T thr = unkey_##SFX(hv[0]);                                                                   \
    if (thr != thr) return size;                                                        \
    VT vt = SET1(thr), va = SET1(add), vs = SET1(sub);                                  \
    for (; i + 4 * W <= n; i += 4 * W) {                                                \
        VT a = LOADU(x + i), b = LOADU(x + i + W);                                      \
        VT c = LOADU(x + i + 2 * W), d = LOADU(x + i + 3 * W);                          \
        if (has_add) {                                                                  \
            a = ADD(SUB(a, vs), va); b = ADD(SUB(b, vs), va);                           \
            c = ADD(SUB(c, vs), va); d = ADD(SUB(d, vs), va);                           \
        }                                                                               \
        VT ma = CMP(a, vt, _CMP_NLE_UQ), mb = CMP(b, vt, _CMP_NLE_UQ);                  \
        VT mc = CMP(c, vt, _CMP_NLE_UQ), md = CMP(d, vt, _CMP_NLE_UQ);                  \
        VT any = OR(OR(ma, mb), OR(mc, md));                                            \
        if (!MOVEMASK(any)) continue;                                                   \
        uint32_t mask = (uint32_t)MOVEMASK(ma) | ((uint32_t)MOVEMASK(mb) << W)          \
                      | ((uint32_t)MOVEMASK(mc) << (2 * W))                             \
                      | ((uint32_t)MOVEMASK(md) << (3 * W));                            \
        while (mask) {                                                                  \
            int j = __builtin_ctz(mask);                                                \
            mask &= mask - 1;                                                           \
            T v = has_add ? (T)((T)(x[i + j] - sub) + add) : x[i + j];                             \
            if (!(v <= thr)) {                                                          \
                sift_down_##SFX(hv, hi, size, 0, key_##SFX(v), base + i + j);           \
                thr = unkey_##SFX(hv[0]);                                               \
                if (thr != thr) return size;                                            \
            }                                                                           \
        }                                                                               \
        vt = SET1(thr);                                                                 \
    }                                                                                   \
    return scan_tail_##SFX(hv, hi, size, k, x, i, n, sub, add, has_add, base);          \
}

DK_SCAN_AVX2(f32, float, uint32_t, __m256, 8, _mm256_loadu_ps, _mm256_set1_ps, _mm256_add_ps,
             _mm256_sub_ps, _mm256_cmp_ps, _mm256_or_ps, _mm256_movemask_ps)
DK_SCAN_AVX2(f64, double, uint64_t, __m256d, 4, _mm256_loadu_pd, _mm256_set1_pd, _mm256_add_pd,
             _mm256_sub_pd, _mm256_cmp_pd, _mm256_or_pd, _mm256_movemask_pd)

FDL_TARGET_AVX2 static void sub_f32_avx2(const float *x, float *y, int64_t n, float m,
                                         float l) {
    __m256 vm = _mm256_set1_ps(m), vl = _mm256_set1_ps(l);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_ps(y + i, _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vl));
        _mm256_storeu_ps(y + i + 8,
                         _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm), vl));
    }
    for (; i < n; i++) y[i] = (x[i] - m) - l;
}

FDL_TARGET_AVX2 static void sub_f64_avx2(const double *x, double *y, int64_t n, double m,
                                         double l) {
    __m256d vm = _mm256_set1_pd(m), vl = _mm256_set1_pd(l);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_pd(y + i, _mm256_sub_pd(_mm256_sub_pd(_mm256_loadu_pd(x + i), vm), vl));
        _mm256_storeu_pd(y + i + 4,
                         _mm256_sub_pd(_mm256_sub_pd(_mm256_loadu_pd(x + i + 4), vm), vl));
    }
    for (; i < n; i++) y[i] = (x[i] - m) - l;
}

FDL_TARGET_AVX2 static void exp_f32_avx2(const float *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, exp_f32_v(_mm256_loadu_ps(x + i)));
    for (; i < n; i++) y[i] = exp_f32_s(x[i]);
}

FDL_TARGET_AVX2 static void exp_f64_avx2(const double *x, double *y, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) _mm256_storeu_pd(y + i, exp_f64_v(_mm256_loadu_pd(x + i)));
    for (; i < n; i++) y[i] = exp_f64_s(x[i]);
}

#define USE_AVX2(level) ((level) >= FDL_SIMD_AVX2)
#else
#define USE_AVX2(level) 0
#endif

/* --------------------------------------------------------------- public */

#if FDL_HAVE_AVX2_TARGET
#define DK_DISPATCH(level, avx2_call, scalar_call) \
    do { if (USE_AVX2(level)) { avx2_call; } else { scalar_call; } } while (0)
#else
#define DK_DISPATCH(level, avx2_call, scalar_call) do { scalar_call; } while (0)
#endif

#define DK_PUBLIC(SFX, T, KT)                                                            \
int64_t fdl_dk_scan_##SFX(KT *hv, int64_t *hi, int64_t size, int64_t k, const T *x,       \
                          int64_t n, int64_t base, int level) {                          \
    DK_DISPATCH(level, return scan_##SFX##_avx2(hv, hi, size, k, x, n, 0, 0, 0, base),   \
                return scan_tail_##SFX(hv, hi, size, k, x, 0, n, 0, 0, 0, base));        \
    return size;                                                                         \
}                                                                                        \
int64_t fdl_dk_scan_add_##SFX(KT *hv, int64_t *hi, int64_t size, int64_t k, const T *x,   \
                              int64_t n, T sub, T add, int64_t base, int level) {        \
    DK_DISPATCH(level, return scan_##SFX##_avx2(hv, hi, size, k, x, n, sub, add, 1, base),\
                return scan_tail_##SFX(hv, hi, size, k, x, 0, n, sub, add, 1, base));    \
    return size;                                                                         \
}                                                                                        \
void fdl_dk_stats_##SFX(const T *x, int64_t n, double *m, double *s, int *bad,           \
                        int level) {                                                     \
    DK_DISPATCH(level, stats_##SFX##_avx2(x, n, m, s, bad),                              \
                stats_##SFX##_scalar(x, n, m, s, bad));                                  \
}                                                                                        \
double fdl_dk_row_lse_##SFX(const T *x, int64_t n, int level, double *pm) {              \
    double M = -INFINITY, S = 0.0;                                                       \
    int bad = 0;                                                                         \
    for (int64_t i = 0; i < n; i += FDL_DK_CHUNK) {                                      \
        double m, s;                                                                     \
        int b;                                                                           \
        fdl_dk_stats_##SFX(x + i, n - i < FDL_DK_CHUNK ? n - i : FDL_DK_CHUNK, &m, &s,   \
                           &b, level);                                                   \
        fold_step(&M, &S, &bad, m, s, b);                                                \
    }                                                                                    \
    return fold_end(M, S, bad, pm);                                                      \
}                                                                                        \
void fdl_dk_sub_##SFX(const T *x, T *y, int64_t n, T m, T l, int level) {                \
    DK_DISPATCH(level, sub_##SFX##_avx2(x, y, n, m, l),                                  \
                for (int64_t i = 0; i < n; i++) y[i] = (x[i] - m) - l);                  \
}                                                                                        \
void fdl_dk_exp_##SFX(const T *x, T *y, int64_t n, int level) {                          \
    DK_DISPATCH(level, exp_##SFX##_avx2(x, y, n),                                        \
                for (int64_t i = 0; i < n; i++) y[i] = exp_##SFX##_s(x[i]));             \
}

/* Fold one chunk's (m, s, bad) into the row's running (M, S, bad), in chunk
 * order: the running sum is rescaled when the maximum grows. */
static inline void fold_step(double *M, double *S, int *bad, double m, double s, int b) {
    if (b) { *bad = 1; return; }
    if (*bad || m == -INFINITY) return;
    if (m > *M) {
        *S = (*M == -INFINITY ? 0.0 : *S * exp(*M - m)) + s;
        *M = m;
    } else {
        *S += (m == *M) ? s : s * exp(m - *M);
    }
}

/* log(sum) of a folded row, its max in *pm: NaN and NaN when the row holds NaN
 * or +inf; NaN and -inf when it is all -inf. */
static inline double fold_end(double M, double S, int bad, double *pm) {
    if (bad) { *pm = NAN; return NAN; }
    *pm = M;
    if (M == -INFINITY) return NAN;
    return log(S);
}

double fdl_dk_fold(const double *m, const double *s, const int *bad, int64_t nch,
                   double *pm) {
    double M = -INFINITY, S = 0.0;
    int b = 0;
    for (int64_t c = 0; c < nch; c++) fold_step(&M, &S, &b, m[c], s[c], bad[c]);
    return fold_end(M, S, b, pm);
}

DK_PUBLIC(f32, float, uint32_t)
DK_PUBLIC(f64, double, uint64_t)

/* -------------------------------------------------------------- float16 */

/* float16 rows (uint16_t bit patterns) are converted to float32 in pieces
 * into a stack buffer that stays in L1 and fed to the float32 kernels above:
 * the results are bitwise those of the float32 kernels on the converted row
 * (the conversion is exact), so the float32 twins' equality carries over.  The
 * AVX2 tier converts with F16C when the CPU has it. */
#define H16_PIECE 1024

#if FDL_HAVE_AVX2_TARGET
FDL_TARGET_AVX2 static void sub_f16_avx2(const uint16_t *x, uint16_t *y, int64_t n,
                                              float m, float l) {
    __m256 vm = _mm256_set1_ps(m), vl = _mm256_set1_ps(l);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        fdl_f2h_v(y + i, _mm256_sub_ps(_mm256_sub_ps(fdl_h2f_v(x + i), vm), vl));
        fdl_f2h_v(y + i + 8, _mm256_sub_ps(_mm256_sub_ps(fdl_h2f_v(x + i + 8), vm), vl));
    }
    for (; i < n; i++) y[i] = fdl_f2h((fdl_h2f(x[i]) - m) - l);
}
#define USE_F16C(level) USE_AVX2(level)   /* the AVX2 tier requires F16C (simd.h) */
#else
#define USE_F16C(level) 0
#endif

static void h2f(const uint16_t *x, float *y, int64_t n, int f16c) {
#if FDL_HAVE_AVX2_TARGET
    if (f16c) { fdl_h2f_avx2(x, y, n); return; }
#endif
    (void)f16c;
    for (int64_t i = 0; i < n; i++) y[i] = fdl_h2f(x[i]);
}

static int64_t scan_f16(uint32_t *hk, int64_t *hi, int64_t size, int64_t k, const uint16_t *x,
                        int64_t n, float sub, float add, int has_add, int64_t base, int level) {
    float buf[H16_PIECE];
    int f16c = USE_F16C(level);
    for (int64_t lo = 0; lo < n; lo += H16_PIECE) {
        if (size == k && hk[0] == UINT32_MAX) break;    /* a NaN root: nothing enters */
        int64_t ln = n - lo < H16_PIECE ? n - lo : H16_PIECE;
        h2f(x + lo, buf, ln, f16c);
        DK_DISPATCH(level,
                    size = scan_f32_avx2(hk, hi, size, k, buf, ln, sub, add, has_add, base + lo),
                    size = scan_tail_f32(hk, hi, size, k, buf, 0, ln, sub, add, has_add, base + lo));
    }
    return size;
}

int64_t fdl_dk_scan_f16(uint32_t *hk, int64_t *hi, int64_t size, int64_t k, const uint16_t *x,
                        int64_t n, int64_t base, int level) {
    return scan_f16(hk, hi, size, k, x, n, 0.0f, 0.0f, 0, base, level);
}

int64_t fdl_dk_scan_add_f16(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                            const uint16_t *x, int64_t n, float sub, float add, int64_t base,
                            int level) {
    return scan_f16(hk, hi, size, k, x, n, sub, add, 1, base, level);
}

void fdl_dk_stats_f16(const uint16_t *x, int64_t n, double *m, double *s, int *bad, int level) {
    float buf[FDL_DK_CHUNK];
    if (n > FDL_DK_CHUNK) {         /* outside the contract: refuse rather than overflow */
        *m = NAN; *s = 0.0; *bad = 1;
        return;
    }
    h2f(x, buf, n, USE_F16C(level));
    fdl_dk_stats_f32(buf, n, m, s, bad, level);
}

double fdl_dk_row_lse_f16(const uint16_t *x, int64_t n, int level, double *pm) {
    double M = -INFINITY, S = 0.0;
    int bad = 0;
    for (int64_t i = 0; i < n; i += FDL_DK_CHUNK) {
        double m, s;
        int b;
        fdl_dk_stats_f16(x + i, n - i < FDL_DK_CHUNK ? n - i : FDL_DK_CHUNK, &m, &s, &b, level);
        fold_step(&M, &S, &bad, m, s, b);
    }
    return fold_end(M, S, bad, pm);
}

void fdl_dk_sub_f16(const uint16_t *x, uint16_t *y, int64_t n, float m, float l, int level) {
#if FDL_HAVE_AVX2_TARGET
    if (USE_F16C(level)) { sub_f16_avx2(x, y, n, m, l); return; }
#endif
    (void)level;
    for (int64_t i = 0; i < n; i++) y[i] = fdl_f2h((fdl_h2f(x[i]) - m) - l);
}

void fdl_dk_h2f(const uint16_t *x, float *y, int64_t n, int level) {
    h2f(x, y, n, USE_F16C(level));
}

void fdl_dk_f2h(const float *x, uint16_t *y, int64_t n, int level) {
#if FDL_HAVE_AVX2_TARGET
    if (USE_F16C(level)) { fdl_f2h_avx2(x, y, n); return; }
#endif
    (void)level;
    for (int64_t i = 0; i < n; i++) y[i] = fdl_f2h(x[i]);
}
