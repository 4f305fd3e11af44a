/* Decoding kernels, AVX-512 (F/BW/VL/DQ) build: the body (decodek_body.h)
 * compiled for AVX-512 plus hand-written overrides of the exp, the
 * statistics, the scans' prefilter and the float16 conversions: 16 float /
 * 8 double lanes, masked tails.  Each override has the signature of the body
 * function it replaces in the table (its scalar twin, named in its comment)
 * and gives bitwise the same result: the same arithmetic per element
 * (decodek_exp.h) and the sums in the lane order that the twin defines. */
#include "decodek_isa.h"

#if FDL_HAVE_AVX2_TARGET
#include "decodek_exp.h"
#include "f16.h"

#include <math.h>
#include <string.h>

#define ATTR FDL_TARGET_AVX512
#define DK_ISA avx512
#include "decodek_types.h"

#define AVX512 FDL_TARGET_AVX512

/* the first r (< 16 or more) lanes of 16 */
static inline __mmask16 lanes16(int64_t r) {
    return r >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << r) - 1u);
}
static inline __mmask8 lanes8(int64_t r) {
    return r >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << r) - 1u);
}

/* ------------------------------------------------------------------- exp */

/* dk_exp_core_f32 (decodek_exp.h) on 16 lanes */
AVX512 static inline __m512 exp_core_f32_z(__m512 d0) {
    __m512 d = _mm512_max_ps(d0, _mm512_set1_ps(F32_LO));
    __m512 t = _mm512_fmadd_ps(d, _mm512_set1_ps(F32_LOG2E), _mm512_set1_ps(F32_MAGIC));
    __m512 nf = _mm512_sub_ps(t, _mm512_set1_ps(F32_MAGIC));
    __m512 r = _mm512_fnmadd_ps(nf, _mm512_set1_ps(F32_C1), d);
    r = _mm512_fnmadd_ps(nf, _mm512_set1_ps(F32_C2), r);
    __m512 z = _mm512_mul_ps(r, r);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(F32_P0), r, _mm512_set1_ps(F32_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(F32_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(F32_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(F32_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(F32_P5));
    __m512 y = _mm512_fmadd_ps(p, z, r);
    y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(_mm512_castps_si512(t), 23);
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(y), e));
}

/* dk_exp_f32 on 16 lanes */
AVX512 static inline __m512 exp_f32_z(__m512 d0) {
    __m512 y = exp_core_f32_z(_mm512_min_ps(d0, _mm512_set1_ps(F32_HI)));
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(d0, _mm512_set1_ps(F32_LO), _CMP_GE_OQ), y);
}

/* dk_exp_core_f64 on 8 lanes */
AVX512 static inline __m512d exp_core_f64_z(__m512d d0) {
    __m512d d = _mm512_max_pd(d0, _mm512_set1_pd(F64_LO));
    __m512d t = _mm512_fmadd_pd(d, _mm512_set1_pd(F64_LOG2E), _mm512_set1_pd(F64_MAGIC));
    __m512d nf = _mm512_sub_pd(t, _mm512_set1_pd(F64_MAGIC));
    __m512d r = _mm512_fnmadd_pd(nf, _mm512_set1_pd(F64_C1), d);
    r = _mm512_fnmadd_pd(nf, _mm512_set1_pd(F64_C2), r);
    __m512d p = _mm512_fmadd_pd(_mm512_set1_pd(F64_Q13), r, _mm512_set1_pd(F64_Q12));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(F64_Q11));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(F64_Q10));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(F64_Q9));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(F64_Q8));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(F64_Q7));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(F64_Q6));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(F64_Q5));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(F64_Q4));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(F64_Q3));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(F64_Q2));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(F64_Q1));
    __m512d y = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0));
    __m512i e = _mm512_slli_epi64(_mm512_castpd_si512(t), 52);
    return _mm512_castsi512_pd(_mm512_add_epi64(_mm512_castpd_si512(y), e));
}

/* dk_exp_f64 on 8 lanes */
AVX512 static inline __m512d exp_f64_z(__m512d d0) {
    __m512d y = exp_core_f64_z(_mm512_min_pd(d0, _mm512_set1_pd(F64_HI)));
    return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(d0, _mm512_set1_pd(F64_LO), _CMP_GE_OQ), y);
}

/* twin: exp_f32_avx512 (the body) */
AVX512 static void exp_f32_avx512i(const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = lanes16(n - i);
        _mm512_mask_storeu_ps(y + i, m, exp_f32_z(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

/* twin: exp_f64_avx512 (the body) */
AVX512 static void exp_f64_avx512i(const double *x, double *y, int64_t n) {
    for (int64_t i = 0; i < n; i += 8) {
        __mmask8 m = lanes8(n - i);
        _mm512_mask_storeu_pd(y + i, m, exp_f64_z(_mm512_maskz_loadu_pd(m, x + i)));
    }
}

/* ------------------------------------------------------------- statistics */

/* twin: stats_f32 of decodek_body.h.  Its layout: per block of 32, float64
 * lane l (< 8) adds (e[l] + e[l+8]) + (e[l+16] + e[l+24]); a tail element t
 * goes to lane t % 8.  Here two blocks per step: the 128-bit shuffles put the
 * halves of block 0 in the low and block 1 in the high 256 bits, so one
 * float add tree gives both blocks' sums, added to the 8 float64 lanes block
 * 0 first.  The masked tail adds +0.0 in the lanes past n (the lanes are
 * never -0.0, so that changes nothing). */
AVX512 static void stats_f32_avx512i(const float *x, int64_t n, double *pm, double *ps,
                                     int *pbad) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
    __mmask16 u = 0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        __m512 c = _mm512_loadu_ps(x + i + 32), d = _mm512_loadu_ps(x + i + 48);
        m0 = _mm512_max_ps(m0, a);
        m1 = _mm512_max_ps(m1, b);
        m2 = _mm512_max_ps(m2, c);
        m3 = _mm512_max_ps(m3, d);
        u |= _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(c, d, _CMP_UNORD_Q);
    }
    for (; i < n; i += 16) {
        __mmask16 k = lanes16(n - i);
        __m512 a = _mm512_mask_loadu_ps(ninf, k, x + i);
        m0 = _mm512_max_ps(m0, a);
        u |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
    }
    float mx = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
    if (!stats_pre_f32_avx512(mx, u != 0, pm, ps, pbad)) return;
    const __m512 mv = _mm512_set1_ps(mx);
    __m512d acc = _mm512_setzero_pd();
    for (i = 0; i + 64 <= n; i += 64) {
        __m512 e0 = exp_core_f32_z(_mm512_sub_ps(_mm512_loadu_ps(x + i), mv));
        __m512 e1 = exp_core_f32_z(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), mv));
        __m512 e2 = exp_core_f32_z(_mm512_sub_ps(_mm512_loadu_ps(x + i + 32), mv));
        __m512 e3 = exp_core_f32_z(_mm512_sub_ps(_mm512_loadu_ps(x + i + 48), mv));
        __m512 s02 = _mm512_add_ps(_mm512_shuffle_f32x4(e0, e2, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_f32x4(e0, e2, _MM_SHUFFLE(3, 2, 3, 2)));
        __m512 s13 = _mm512_add_ps(_mm512_shuffle_f32x4(e1, e3, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_f32x4(e1, e3, _MM_SHUFFLE(3, 2, 3, 2)));
        __m512 f = _mm512_add_ps(s02, s13);
        acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(f)));
        acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_extractf32x8_ps(f, 1)));
    }
    if (i + 32 <= n) {
        __m512 e0 = exp_core_f32_z(_mm512_sub_ps(_mm512_loadu_ps(x + i), mv));
        __m512 e1 = exp_core_f32_z(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), mv));
        __m256 f = _mm256_add_ps(
            _mm256_add_ps(_mm512_castps512_ps256(e0), _mm512_extractf32x8_ps(e0, 1)),
            _mm256_add_ps(_mm512_castps512_ps256(e1), _mm512_extractf32x8_ps(e1, 1)));
        acc = _mm512_add_pd(acc, _mm512_cvtps_pd(f));
        i += 32;
    }
    for (; i < n; i += 16) {
        __mmask16 k = lanes16(n - i);
        __m512 e = _mm512_maskz_mov_ps(
            k, exp_core_f32_z(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), mv)));
        acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        if (n - i > 8) acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
    }
    double a[8];
    _mm512_storeu_pd(a, acc);
    *ps = lanes_sum_f32_avx512(a);
}

/* twin: stats_f64 of decodek_body.h (element l of each block of 16, and of
 * the tail, to float64 lane l): lanes 0-7 in acc0, 8-15 in acc1 */
AVX512 static void stats_f64_avx512i(const double *x, int64_t n, double *pm, double *ps,
                                     int *pbad) {
    const __m512d ninf = _mm512_set1_pd(-INFINITY);
    __m512d m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
    __mmask8 u = 0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512d a = _mm512_loadu_pd(x + i), b = _mm512_loadu_pd(x + i + 8);
        __m512d c = _mm512_loadu_pd(x + i + 16), d = _mm512_loadu_pd(x + i + 24);
        m0 = _mm512_max_pd(m0, a);
        m1 = _mm512_max_pd(m1, b);
        m2 = _mm512_max_pd(m2, c);
        m3 = _mm512_max_pd(m3, d);
        u |= _mm512_cmp_pd_mask(a, b, _CMP_UNORD_Q) | _mm512_cmp_pd_mask(c, d, _CMP_UNORD_Q);
    }
    for (; i < n; i += 8) {
        __mmask8 k = lanes8(n - i);
        __m512d a = _mm512_mask_loadu_pd(ninf, k, x + i);
        m0 = _mm512_max_pd(m0, a);
        u |= _mm512_cmp_pd_mask(a, a, _CMP_UNORD_Q);
    }
    double mx = _mm512_reduce_max_pd(_mm512_max_pd(_mm512_max_pd(m0, m1), _mm512_max_pd(m2, m3)));
    if (!stats_pre_f64_avx512(mx, u != 0, pm, ps, pbad)) return;
    const __m512d mv = _mm512_set1_pd(mx);
    __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
    for (i = 0; i + 32 <= n; i += 32) {
        __m512d e0 = exp_core_f64_z(_mm512_sub_pd(_mm512_loadu_pd(x + i), mv));
        __m512d e1 = exp_core_f64_z(_mm512_sub_pd(_mm512_loadu_pd(x + i + 8), mv));
        __m512d e2 = exp_core_f64_z(_mm512_sub_pd(_mm512_loadu_pd(x + i + 16), mv));
        __m512d e3 = exp_core_f64_z(_mm512_sub_pd(_mm512_loadu_pd(x + i + 24), mv));
        acc0 = _mm512_add_pd(_mm512_add_pd(acc0, e0), e2);
        acc1 = _mm512_add_pd(_mm512_add_pd(acc1, e1), e3);
    }
    for (int h = 0; i < n; i += 8, h ^= 1) {
        __mmask8 k = lanes8(n - i);
        __m512d e = _mm512_maskz_mov_pd(
            k, exp_core_f64_z(_mm512_sub_pd(_mm512_maskz_loadu_pd(k, x + i), mv)));
        if (h) acc1 = _mm512_add_pd(acc1, e);
        else acc0 = _mm512_add_pd(acc0, e);
    }
    double a[16];
    _mm512_storeu_pd(a, acc0);
    _mm512_storeu_pd(a + 8, acc1);
    *ps = lanes_sum_f64_avx512(a);
}

/* ------------------------------------------------------------------ scans */

/* Prefiltered top-k scans as in decodek_avx2.c, 4 vectors of 16 (float) or 8
 * (double) per step: compare masks !(x <= thr) (_CMP_NLE_UQ: NaN passes);
 * lanes that pass go, in index order, to the exact replacement against the
 * current root.  Twin: scan_from_f32 / scan_from_f64. */
AVX512 static int64_t scan_from_f32_avx512i(uint32_t *hk, int64_t *hi, int64_t size,
                                            int64_t k, const float *x, int64_t n, float sub,
                                            float add, int has_add, int64_t base) {
    int64_t i = 0;
    for (; i < n && size < k; i++) {
        float v = has_add ? (float)((float)(x[i] - sub) + add) : x[i];
        size = push_f32_avx512(hk, hi, size, key_f32_avx512(v), base + i);
    }
    if (i >= n) return size;
    float thr = unkey_f32_avx512(hk[0]);
    if (thr != thr) return size;
    __m512 vt = _mm512_set1_ps(thr), va = _mm512_set1_ps(add), vs = _mm512_set1_ps(sub);
    for (; i + 64 <= n; i += 64) {
        __mmask16 c[4];
        for (int j = 0; j < 4; j++) {
            __m512 v = _mm512_loadu_ps(x + i + 16 * j);
            if (has_add) v = _mm512_add_ps(_mm512_sub_ps(v, vs), va);
            c[j] = _mm512_cmp_ps_mask(v, vt, _CMP_NLE_UQ);
        }
        /* one mask test per step; the 64-bit lane mask only when some lane passes */
        if (!((c[0] | c[1]) | (c[2] | c[3]))) continue;
        uint64_t mask = 0;
        for (int j = 0; j < 4; j++) mask |= (uint64_t)c[j] << (16 * j);
        while (mask) {
            int j = __builtin_ctzll(mask);
            mask &= mask - 1;
            float w = has_add ? (float)((float)(x[i + j] - sub) + add) : x[i + j];
            if (!(w <= thr)) {
                sift_down_f32_avx512(hk, hi, size, 0, key_f32_avx512(w), base + i + j);
                thr = unkey_f32_avx512(hk[0]);
                if (thr != thr) return size;
            }
        }
        vt = _mm512_set1_ps(thr);
    }
    return scan_from_f32_avx512(hk, hi, size, k, x, i, n, sub, add, has_add, base);
}

AVX512 static int64_t scan_from_f64_avx512i(uint64_t *hk, int64_t *hi, int64_t size,
                                            int64_t k, const double *x, int64_t n, double sub,
                                            double add, int has_add, int64_t base) {
    int64_t i = 0;
    for (; i < n && size < k; i++) {
        double v = has_add ? (x[i] - sub) + add : x[i];
        size = push_f64_avx512(hk, hi, size, key_f64_avx512(v), base + i);
    }
    if (i >= n) return size;
    double thr = unkey_f64_avx512(hk[0]);
    if (thr != thr) return size;
    __m512d vt = _mm512_set1_pd(thr), va = _mm512_set1_pd(add), vs = _mm512_set1_pd(sub);
    for (; i + 32 <= n; i += 32) {
        __mmask8 c[4];
        for (int j = 0; j < 4; j++) {
            __m512d v = _mm512_loadu_pd(x + i + 8 * j);
            if (has_add) v = _mm512_add_pd(_mm512_sub_pd(v, vs), va);
            c[j] = _mm512_cmp_pd_mask(v, vt, _CMP_NLE_UQ);
        }
        if (!((c[0] | c[1]) | (c[2] | c[3]))) continue;
        uint32_t mask = 0;
        for (int j = 0; j < 4; j++) mask |= (uint32_t)c[j] << (8 * j);
        while (mask) {
            int j = __builtin_ctz(mask);
            mask &= mask - 1;
            double w = has_add ? (x[i + j] - sub) + add : x[i + j];
            if (!(w <= thr)) {
                sift_down_f64_avx512(hk, hi, size, 0, key_f64_avx512(w), base + i + j);
                thr = unkey_f64_avx512(hk[0]);
                if (thr != thr) return size;
            }
        }
        vt = _mm512_set1_pd(thr);
    }
    return scan_from_f64_avx512(hk, hi, size, k, x, i, n, sub, add, has_add, base);
}

/* twins: scan / scan_add of the body */
AVX512 static int64_t scan_f32_avx512i(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                                       const float *x, int64_t n, int64_t base) {
    return scan_from_f32_avx512i(hk, hi, size, k, x, n, 0.0f, 0.0f, 0, base);
}
AVX512 static int64_t scan_add_f32_avx512i(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                                           const float *x, int64_t n, float sub, float add,
                                           int64_t base) {
    return scan_from_f32_avx512i(hk, hi, size, k, x, n, sub, add, 1, base);
}
AVX512 static int64_t scan_f64_avx512i(uint64_t *hk, int64_t *hi, int64_t size, int64_t k,
                                       const double *x, int64_t n, int64_t base) {
    return scan_from_f64_avx512i(hk, hi, size, k, x, n, 0.0, 0.0, 0, base);
}
AVX512 static int64_t scan_add_f64_avx512i(uint64_t *hk, int64_t *hi, int64_t size, int64_t k,
                                           const double *x, int64_t n, double sub, double add,
                                           int64_t base) {
    return scan_from_f64_avx512i(hk, hi, size, k, x, n, sub, add, 1, base);
}

/* ------------------------------------------------------ float16 conversion */

/* twins: fdl_h2f_scalar / fdl_f2h_scalar (f16.h), 16 lanes, masked tail */
AVX512 static void h2f_avx512(const uint16_t *h, float *f, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = lanes16(n - i);
        _mm512_mask_storeu_ps(f + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, h + i)));
    }
}

AVX512 static void f2h_avx512(const float *f, uint16_t *h, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = lanes16(n - i);
        __m256i v = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, f + i),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_mask_storeu_epi16(h + i, m, v);
    }
}

/* ----------------------------------------------------------------- tables */

const fdl_dk_f32 fdl_dk_f32_avx512 = {
    scan_f32_avx512i, scan_add_f32_avx512i, merge_f32_avx512, sort_f32_avx512,
    stats_f32_avx512i, sub_f32_avx512, exp_f32_avx512i,
};
const fdl_dk_f64 fdl_dk_f64_avx512 = {
    scan_f64_avx512i, scan_add_f64_avx512i, merge_f64_avx512, sort_f64_avx512,
    stats_f64_avx512i, sub_f64_avx512, exp_f64_avx512i,
};

#define DK16_F32 fdl_dk_f32_avx512
#define DK16_H2F h2f_avx512
#define DK16_F2H f2h_avx512
#include "decodek_f16.h"

const fdl_dk_f16 fdl_dk_f16_avx512 = {
    scan_f16_avx512, scan_add_f16_avx512, merge_f32_avx512, sort_f32_avx512,
    stats_f16_avx512, sub_f16_avx512, h2f_avx512, f2h_avx512,
};
#endif
