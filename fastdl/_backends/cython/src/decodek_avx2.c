/* Decoding kernels, AVX2/FMA/F16C build: the body (decodek_body.h) compiled
 * for AVX2 plus hand-written overrides of the scans' prefilter, the
 * statistics and the exp.  Each override has the signature of the body
 * function it replaces in the table (its scalar twin, named in its comment)
 * and gives bitwise the same result. */
#include "decodek_isa.h"

#if FDL_HAVE_AVX2_TARGET
#include "decodek_exp.h"
#include "f16.h"

#include <math.h>
#include <string.h>

#define ATTR FDL_TARGET_AVX2
#define DK_ISA avx2
#include "decodek_types.h"

/* ------------------------------------------------------------------- exp */

/* dk_exp_core_f32 (decodek_exp.h) on 8 lanes */
FDL_TARGET_AVX2 static inline __m256 exp_core_f32_v(__m256 d0) {
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

/* dk_exp_f32 on 8 lanes */
FDL_TARGET_AVX2 static inline __m256 exp_f32_v(__m256 d0) {
    __m256 y = exp_core_f32_v(_mm256_min_ps(d0, _mm256_set1_ps(F32_HI)));
    return _mm256_and_ps(y, _mm256_cmp_ps(d0, _mm256_set1_ps(F32_LO), _CMP_GE_OQ));
}

/* dk_exp_core_f64 on 4 lanes */
FDL_TARGET_AVX2 static inline __m256d exp_core_f64_v(__m256d d0) {
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

/* dk_exp_f64 on 4 lanes */
FDL_TARGET_AVX2 static inline __m256d exp_f64_v(__m256d d0) {
    __m256d y = exp_core_f64_v(_mm256_min_pd(d0, _mm256_set1_pd(F64_HI)));
    return _mm256_and_pd(y, _mm256_cmp_pd(d0, _mm256_set1_pd(F64_LO), _CMP_GE_OQ));
}

/* twin: exp_f32_avx2 (the body) */
FDL_TARGET_AVX2 static void exp_f32_avx2i(const float *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, exp_f32_v(_mm256_loadu_ps(x + i)));
    for (; i < n; i++) y[i] = dk_exp_f32(x[i]);
}

/* twin: exp_f64_avx2 (the body) */
FDL_TARGET_AVX2 static void exp_f64_avx2i(const double *x, double *y, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) _mm256_storeu_pd(y + i, exp_f64_v(_mm256_loadu_pd(x + i)));
    for (; i < n; i++) y[i] = dk_exp_f64(x[i]);
}

/* ------------------------------------------------------------- statistics */

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

/* twin: stats_f32 of decodek_body.h (8 float64 lanes, blocks of 32) */
FDL_TARGET_AVX2 static void stats_f32_avx2i(const float *x, int64_t n, double *pm, double *ps,
                                            int *pbad) {
    __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
    __m256 u = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        __m256 c = _mm256_loadu_ps(x + i + 16), d = _mm256_loadu_ps(x + i + 24);
        m0 = _mm256_max_ps(m0, a);
        m1 = _mm256_max_ps(m1, b);
        m2 = _mm256_max_ps(m2, c);
        m3 = _mm256_max_ps(m3, d);
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
    if (!stats_pre_f32_avx2(mx, nan, pm, ps, pbad)) return;
    __m256 mv = _mm256_set1_ps(mx);
    __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
    for (i = 0; i + 32 <= n; i += 32) {
        __m256 e0 = exp_core_f32_v(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
        __m256 e1 = exp_core_f32_v(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), mv));
        __m256 e2 = exp_core_f32_v(_mm256_sub_ps(_mm256_loadu_ps(x + i + 16), mv));
        __m256 e3 = exp_core_f32_v(_mm256_sub_ps(_mm256_loadu_ps(x + i + 24), mv));
        __m256 f = _mm256_add_ps(_mm256_add_ps(e0, e1), _mm256_add_ps(e2, e3));
        lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(f)));
        hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
    }
    double a[8];
    _mm256_storeu_pd(a, lo);
    _mm256_storeu_pd(a + 4, hi);
    sum_tail_f32_avx2(x, i, n, mx, a);
    *ps = lanes_sum_f32_avx2(a);
}

/* twin: stats_f64 of decodek_body.h (16 float64 lanes) */
FDL_TARGET_AVX2 static void stats_f64_avx2i(const double *x, int64_t n, double *pm, double *ps,
                                            int *pbad) {
    __m256d m0 = _mm256_set1_pd(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
    __m256d u = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256d a = _mm256_loadu_pd(x + i), b = _mm256_loadu_pd(x + i + 4);
        __m256d c = _mm256_loadu_pd(x + i + 8), d = _mm256_loadu_pd(x + i + 12);
        m0 = _mm256_max_pd(m0, a);
        m1 = _mm256_max_pd(m1, b);
        m2 = _mm256_max_pd(m2, c);
        m3 = _mm256_max_pd(m3, d);
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
    if (!stats_pre_f64_avx2(mx, nan, pm, ps, pbad)) return;
    __m256d mv = _mm256_set1_pd(mx);
    __m256d acc[4];
    for (int l = 0; l < 4; l++) acc[l] = _mm256_setzero_pd();
    for (i = 0; i + 16 <= n; i += 16)
        for (int j = 0; j < 4; j++)
            acc[j] = _mm256_add_pd(
                acc[j], exp_core_f64_v(_mm256_sub_pd(_mm256_loadu_pd(x + i + 4 * j), mv)));
    double a[16];
    for (int l = 0; l < 4; l++) _mm256_storeu_pd(a + 4 * l, acc[l]);
    sum_tail_f64_avx2(x, i, n, mx, a);
    *ps = lanes_sum_f64_avx2(a);
}

/* ------------------------------------------------------------------ scans */

/* Prefiltered top-k scans: 4 vectors per step compared with !(x <= thr)
 * (_CMP_NLE_UQ: NaN passes); lanes that pass go, in index order, to the exact
 * replacement against the current root (the root only grows, so a lane that
 * failed the old threshold fails the new one).  Twin: scan_from_f32. */
FDL_TARGET_AVX2 static int64_t scan_from_f32_avx2i(uint32_t *hk, int64_t *hi, int64_t size,
                                                   int64_t k, const float *x, int64_t n,
                                                   float sub, float add, int has_add,
                                                   int64_t base) {
    int64_t i = 0;
    for (; i < n && size < k; i++) {
        float v = has_add ? (float)((float)(x[i] - sub) + add) : x[i];
        size = push_f32_avx2(hk, hi, size, key_f32_avx2(v), base + i);
    }
    if (i >= n) return size;
    float thr = unkey_f32_avx2(hk[0]);
    if (thr != thr) return size;
    __m256 vt = _mm256_set1_ps(thr), va = _mm256_set1_ps(add), vs = _mm256_set1_ps(sub);
    for (; i + 32 <= n; i += 32) {
        __m256 c[4];
        for (int j = 0; j < 4; j++) {
            __m256 v = _mm256_loadu_ps(x + i + 8 * j);
            if (has_add) v = _mm256_add_ps(_mm256_sub_ps(v, vs), va);
            c[j] = _mm256_cmp_ps(v, vt, _CMP_NLE_UQ);
        }
        /* one test per step; the lane mask only when some lane passes */
        if (!_mm256_movemask_ps(_mm256_or_ps(_mm256_or_ps(c[0], c[1]), _mm256_or_ps(c[2], c[3]))))
            continue;
        uint32_t mask = 0;
        for (int j = 0; j < 4; j++) mask |= (uint32_t)_mm256_movemask_ps(c[j]) << (8 * j);
        while (mask) {
            int j = __builtin_ctz(mask);
            mask &= mask - 1;
            float w = has_add ? (float)((float)(x[i + j] - sub) + add) : x[i + j];
            if (!(w <= thr)) {
                sift_down_f32_avx2(hk, hi, size, 0, key_f32_avx2(w), base + i + j);
                thr = unkey_f32_avx2(hk[0]);
                if (thr != thr) return size;
            }
        }
        vt = _mm256_set1_ps(thr);
    }
    return scan_from_f32_avx2(hk, hi, size, k, x, i, n, sub, add, has_add, base);
}

/* the same for float64 (twin: scan_from_f64) */
FDL_TARGET_AVX2 static int64_t scan_from_f64_avx2i(uint64_t *hk, int64_t *hi, int64_t size,
                                                   int64_t k, const double *x, int64_t n,
                                                   double sub, double add, int has_add,
                                                   int64_t base) {
    int64_t i = 0;
    for (; i < n && size < k; i++) {
        double v = has_add ? (x[i] - sub) + add : x[i];
        size = push_f64_avx2(hk, hi, size, key_f64_avx2(v), base + i);
    }
    if (i >= n) return size;
    double thr = unkey_f64_avx2(hk[0]);
    if (thr != thr) return size;
    __m256d vt = _mm256_set1_pd(thr), va = _mm256_set1_pd(add), vs = _mm256_set1_pd(sub);
    for (; i + 16 <= n; i += 16) {
        __m256d c[4];
        for (int j = 0; j < 4; j++) {
            __m256d v = _mm256_loadu_pd(x + i + 4 * j);
            if (has_add) v = _mm256_add_pd(_mm256_sub_pd(v, vs), va);
            c[j] = _mm256_cmp_pd(v, vt, _CMP_NLE_UQ);
        }
        if (!_mm256_movemask_pd(_mm256_or_pd(_mm256_or_pd(c[0], c[1]), _mm256_or_pd(c[2], c[3]))))
            continue;
        uint32_t mask = 0;
        for (int j = 0; j < 4; j++) mask |= (uint32_t)_mm256_movemask_pd(c[j]) << (4 * j);
        while (mask) {
            int j = __builtin_ctz(mask);
            mask &= mask - 1;
            double w = has_add ? (x[i + j] - sub) + add : x[i + j];
            if (!(w <= thr)) {
                sift_down_f64_avx2(hk, hi, size, 0, key_f64_avx2(w), base + i + j);
                thr = unkey_f64_avx2(hk[0]);
                if (thr != thr) return size;
            }
        }
        vt = _mm256_set1_pd(thr);
    }
    return scan_from_f64_avx2(hk, hi, size, k, x, i, n, sub, add, has_add, base);
}

/* twins: scan / scan_add of the body (over scan_from) */
FDL_TARGET_AVX2 static int64_t scan_f32_avx2i(uint32_t *hk, int64_t *hi, int64_t size,
                                              int64_t k, const float *x, int64_t n,
                                              int64_t base) {
    return scan_from_f32_avx2i(hk, hi, size, k, x, n, 0.0f, 0.0f, 0, base);
}
FDL_TARGET_AVX2 static int64_t scan_add_f32_avx2i(uint32_t *hk, int64_t *hi, int64_t size,
                                                  int64_t k, const float *x, int64_t n,
                                                  float sub, float add, int64_t base) {
    return scan_from_f32_avx2i(hk, hi, size, k, x, n, sub, add, 1, base);
}
FDL_TARGET_AVX2 static int64_t scan_f64_avx2i(uint64_t *hk, int64_t *hi, int64_t size,
                                              int64_t k, const double *x, int64_t n,
                                              int64_t base) {
    return scan_from_f64_avx2i(hk, hi, size, k, x, n, 0.0, 0.0, 0, base);
}
FDL_TARGET_AVX2 static int64_t scan_add_f64_avx2i(uint64_t *hk, int64_t *hi, int64_t size,
                                                  int64_t k, const double *x, int64_t n,
                                                  double sub, double add, int64_t base) {
    return scan_from_f64_avx2i(hk, hi, size, k, x, n, sub, add, 1, base);
}

/* ----------------------------------------------------------------- tables */

const fdl_dk_f32 fdl_dk_f32_avx2 = {
    scan_f32_avx2i, scan_add_f32_avx2i, merge_f32_avx2, sort_f32_avx2,
    stats_f32_avx2i, sub_f32_avx2, exp_f32_avx2i,
};
const fdl_dk_f64 fdl_dk_f64_avx2 = {
    scan_f64_avx2i, scan_add_f64_avx2i, merge_f64_avx2, sort_f64_avx2,
    stats_f64_avx2i, sub_f64_avx2, exp_f64_avx2i,
};

#define DK16_F32 fdl_dk_f32_avx2
#define DK16_H2F fdl_h2f_avx2
#define DK16_F2H fdl_f2h_avx2
#include "decodek_f16.h"

const fdl_dk_f16 fdl_dk_f16_avx2 = {
    scan_f16_avx2, scan_add_f16_avx2, merge_f32_avx2, sort_f32_avx2,
    stats_f16_avx2, sub_f16_avx2, fdl_h2f_avx2, fdl_f2h_avx2,
};
#endif
