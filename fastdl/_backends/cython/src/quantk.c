/* Quantization kernels; see quantk.h for the arithmetic contracts. */
#include "quantk.h"
#include <float.h>
#include "simd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define K_INT8 0
#define K_LIN 1
#define K_NF4 2

#ifndef QZ_PF_ROWS
#define QZ_PF_ROWS 4
#endif
#ifndef QZ_JS
#define QZ_JS 512
#endif
#define ALWAYS_INLINE inline __attribute__((always_inline))
#define NOINLINE __attribute__((noinline))

static const float NF4_CB[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
static float NF4_T[16];

/* byte planes of the 16-entry unit tables (index: 0 NF4, 2..4 absmax bits) for the
 * pshufb lookup of the n = 1 kernel */
static uint8_t LUTP[5][4][16];

void fdl_qk_init(void) {
    for (int t = 0; t < 5; t++) {
        if (t == 1) continue;
        for (int c = 0; c < 16; c++) {
            float u = t == 0 ? NF4_CB[c] : (float)(c - (1 << (t - 1)));
            uint32_t bits;
            memcpy(&bits, &u, 4);
            for (int k = 0; k < 4; k++) LUTP[t][k][c] = (uint8_t)(bits >> (8 * k));
        }
    }
    for (int k = 0; k < 15; k++) {
        double mid = ((double)NF4_CB[k] + (double)NF4_CB[k + 1]) / 2;
        float t = (float)mid;
        if ((double)t > mid) t = nextafterf(t, -INFINITY);
        NF4_T[k] = t;
    }
    NF4_T[15] = INFINITY;
}

const float *fdl_qk_nf4_thresholds(void) { return NF4_T; }

static int (*qk_team)(int, int64_t, int64_t) = NULL;

void fdl_qk_set_team(int (*team)(int, int64_t, int64_t)) { qk_team = team; }

/* work: bytes touched, or multiply-adds for the matmuls (as costly per unit) */
static inline int qk_threads(int nthreads, int64_t work, int64_t units) {
    if (qk_team) return qk_team(nthreads, work, units);
    if (nthreads < 1) nthreads = 1;
    if (units < nthreads) nthreads = units < 1 ? 1 : (int)units;
    return nthreads;
}

static inline int qk_kind(const fdl_qk_desc *q) {
    return q->bits > 4 ? K_INT8 : (q->nf4 ? K_NF4 : K_LIN);
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
    return q->nf4 ? NF4_CB[c] : (float)((int)c - (1 << (q->bits - 1)));
}

/* number of whole 32-value halves of a row */
static inline int64_t qk_halves(const fdl_qk_desc *q) {
    return q->bits > 4 ? q->d_in / 32 : 2 * (q->d_in / 64);
}

/* ================================================================ quantize */

typedef struct {
    int bits, nf4, floor_, per_tensor;
    int64_t d_in, d_out, bs, nb;
    float qmax, gscale;
    int coff;          /* code offset (2^(bits-1) for packed absmax, else 0) */
} qz_t;

static inline int qz_code_scalar(const qz_t *z, float w, float div, int zero) {
    float v = w / div;
    if (z->nf4) {
        int c = 0;
        for (int k = 0; k < 15; k++) c += v > NF4_T[k];
        return c;
    }
    float t;
    if (z->floor_) {
        t = floorf(v);
    } else {
        t = truncf(v);
        if (fabsf(v - t) >= 0.5f) t = t + copysignf(1.0f, v);
    }
    t = t < -z->qmax ? -z->qmax : t;
    t = t > z->qmax ? z->qmax : t;
    if (zero) t = 0.0f;
    return (int)t + z->coff;
}

/* block scale from the block's absmax: NF4 the absmax; absmax: the largest float32
 * not above absmax / qmax (float32 quotient, one step down when qmax * it exceeds
 * absmax; the products are exact in double) */
static inline float qz_scale(const qz_t *z, float amax) {
    if (z->nf4) return amax;
    float d = amax / z->qmax;
    if ((double)d * (double)z->qmax > (double)amax) d = nextafterf(d, 0.0f);
    return d;
}

/* Tile: columns [j0, j0+jw), rows [r0, r1) -> codes buf[jj*R + r - r0], scales. */
/* |v| as its bit pattern: ordered like the values, with NaN above +inf, so a max over
 * bit patterns keeps a NaN (the caller then sees a NaN or inf scale and rejects w) */
static inline uint32_t abs_bits(float v) {
    uint32_t b;
    memcpy(&b, &v, 4);
    return b & 0x7fffffffu;
}

static inline float bits_float(uint32_t b) {
    float v;
    memcpy(&v, &b, 4);
    return v;
}

static void qz_tile_scalar(const qz_t *z, const float *w, int64_t j0, int64_t jw, int64_t r0,
                           int64_t r1, uint8_t *buf, int64_t R, float *scales) {
    int64_t step = z->per_tensor ? r1 - r0 : z->bs;
    for (int64_t b0 = r0; b0 < r1; b0 += step) {
        int64_t b1 = b0 + step < r1 ? b0 + step : r1;
        for (int64_t jj = 0; jj < jw; jj++) {
            int64_t j = j0 + jj;
            float s;
            if (z->per_tensor) {
                s = z->gscale;
            } else {
                uint32_t mb = 0;
                for (int64_t r = b0; r < b1; r++) {
                    uint32_t a = abs_bits(w[r * z->d_out + j]);
                    mb = a > mb ? a : mb;
                }
                s = qz_scale(z, bits_float(mb));
                scales[j * z->nb + b0 / z->bs] = s;
            }
            float div = s > 0.0f ? s : 1.0f;
            int zero = !z->nf4 && !(s > 0.0f);
            for (int64_t r = b0; r < b1; r++)
                buf[jj * R + r - r0] = (uint8_t)qz_code_scalar(z, w[r * z->d_out + j], div, zero);
        }
    }
}

#if FDL_HAVE_AVX2_TARGET
/* codes of 8 values (int32 lanes); MODE 0 nf4, 1 floor, 2 nearest */
FDL_TARGET_AVX2 static ALWAYS_INLINE __m256i qz_codes8(const int MODE, __m256 v, __m256 keep,
                                                      __m256 qmax, __m256 nqmax, __m256i coff) {
    if (MODE == 0) {
        __m256i c = _mm256_setzero_si256();
        for (int t = 0; t < 15; t++)
            c = _mm256_sub_epi32(c, _mm256_castps_si256(
                _mm256_cmp_ps(v, _mm256_set1_ps(NF4_T[t]), _CMP_GT_OQ)));
        return c;
    }
    __m256 t;
    if (MODE == 1) {
        t = _mm256_floor_ps(v);
    } else {
        const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        const __m256 signmask = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
        t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        __m256 fr = _mm256_and_ps(_mm256_sub_ps(v, t), absmask);
        __m256 ge = _mm256_cmp_ps(fr, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
        __m256 sg = _mm256_or_ps(_mm256_and_ps(v, signmask), _mm256_set1_ps(1.0f));
        t = _mm256_add_ps(t, _mm256_and_ps(ge, sg));
    }
    t = _mm256_max_ps(t, nqmax);
    t = _mm256_min_ps(t, qmax);
    t = _mm256_and_ps(t, keep);
    return _mm256_add_epi32(_mm256_cvttps_epi32(t), coff);
}

/* Tile: columns [j0, j0+jw), rows [r0, r1); codes -> buf[jj*R + r - r0]; msc: 2*JS floats */
FDL_TARGET_AVX2 static ALWAYS_INLINE void qz_tile_avx2_m(const int MODE, const qz_t *z,
        const float *w, int64_t j0, int64_t jw, int64_t r0, int64_t r1, uint8_t *buf,
        int64_t R, float *scales, float *msc) {
    int64_t jv = jw & ~(int64_t)7;     /* vector columns; the rest through the scalar twin */
    if (jv < jw) qz_tile_scalar(z, w, j0 + jv, jw - jv, r0, r1, buf + jv * R, R, scales);
    if (jv == 0) return;
    const int64_t d_out = z->d_out, nb = z->nb, bs = z->bs;
    const int per_tensor = z->per_tensor;
    const int64_t step = per_tensor ? r1 - r0 : bs;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    const __m256 qmax = _mm256_set1_ps(z->qmax), nqmax = _mm256_set1_ps(-z->qmax);
    const __m256i coff = _mm256_set1_epi32(z->coff);
    const __m256i tr4 = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                         0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    float *dv = msc, *kp = msc + jv;      /* divisors and keep masks per column */
    int32_t tmp[8] __attribute__((aligned(32)));
    for (int64_t b0 = r0; b0 < r1; b0 += step) {
        int64_t b1 = b0 + step < r1 ? b0 + step : r1;
        /* scales */
        if (!per_tensor) {
            for (int64_t k = 0; k < jv; k += 8) _mm256_storeu_ps(dv + k, zero);
            for (int64_t r = b0; r < b1; r++) {
                const float *p = w + r * d_out + j0;
                const char *pf = (const char *)(p + QZ_PF_ROWS * d_out);
                int64_t pfn = r + QZ_PF_ROWS < r1 ? jv * 4 : 0;
                for (int64_t k = 0; k < jv; k += 8) {
                    if (((k * 4) & 63) == 0 && k * 4 < pfn) _mm_prefetch(pf + k * 4, _MM_HINT_T0);
                    /* integer max of |x| bit patterns: NaN above +inf above numbers */
                    _mm256_storeu_si256((__m256i *)(dv + k), _mm256_max_epi32(
                        _mm256_loadu_si256((const __m256i *)(dv + k)),
                        _mm256_castps_si256(_mm256_and_ps(_mm256_loadu_ps(p + k), absmask))));
                }
            }
            int64_t b = b0 / bs;
            if (MODE != 0) {
                /* qz_scale in vectors: d = m / qmax, one float32 step down (bits - 1; d > 0
                 * there) where qmax * d > m in double (exact products) */
                const __m256d qd = _mm256_set1_pd((double)z->qmax);
                for (int64_t k = 0; k < jv; k += 8) {
                    __m256 m = _mm256_loadu_ps(dv + k);
                    __m256 dd = _mm256_div_ps(m, qmax);
                    __m256d lo = _mm256_cmp_pd(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(dd)), qd),
                                               _mm256_cvtps_pd(_mm256_castps256_ps128(m)), _CMP_GT_OQ);
                    __m256d hi = _mm256_cmp_pd(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(dd, 1)), qd),
                                               _mm256_cvtps_pd(_mm256_extractf128_ps(m, 1)), _CMP_GT_OQ);
                    /* 64-bit masks -> 32-bit lanes */
                    __m128 l4 = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(_mm256_castpd_ps(lo),
                                    _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7)));
                    __m128 h4 = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(_mm256_castpd_ps(hi),
                                    _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7)));
                    __m256i down = _mm256_castps_si256(_mm256_set_m128(h4, l4));   /* -1 where too high */
                    dd = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(dd), down));
                    _mm256_storeu_ps(dv + k, dd);
                }
            }
            for (int64_t jj = 0; jj < jv; jj++) scales[(j0 + jj) * nb + b] = dv[jj];
        } else {
            for (int64_t k = 0; k < jv; k++) dv[k] = z->gscale;
        }
        for (int64_t k = 0; k < jv; k += 8) {
            __m256 sv = _mm256_loadu_ps(dv + k);
            __m256 pos = _mm256_cmp_ps(sv, zero, _CMP_GT_OQ);
            _mm256_storeu_ps(dv + k, _mm256_blendv_ps(one, sv, pos));
            _mm256_storeu_ps(kp + k, MODE == 0 ? _mm256_castsi256_ps(_mm256_set1_epi32(-1)) : pos);
        }
        /* codes, 4 rows at a time through a 4x8 byte transpose */
        int64_t r = b0;
        for (; r + 4 <= b1; r += 4) {
            const float *p = w + r * d_out + j0;
            uint8_t *o = buf + (r - r0);
            for (int64_t k = 0; k < jv; k += 8) {
                __m256 d = _mm256_loadu_ps(dv + k), kk = _mm256_loadu_ps(kp + k);
                __m256i c0 = qz_codes8(MODE, _mm256_div_ps(_mm256_loadu_ps(p + k), d), kk, qmax, nqmax, coff);
                __m256i c1 = qz_codes8(MODE, _mm256_div_ps(_mm256_loadu_ps(p + d_out + k), d), kk, qmax, nqmax, coff);
                __m256i c2 = qz_codes8(MODE, _mm256_div_ps(_mm256_loadu_ps(p + 2 * d_out + k), d), kk, qmax, nqmax, coff);
                __m256i c3 = qz_codes8(MODE, _mm256_div_ps(_mm256_loadu_ps(p + 3 * d_out + k), d), kk, qmax, nqmax, coff);
                __m256i bb = _mm256_packs_epi16(_mm256_packs_epi32(c0, c1), _mm256_packs_epi32(c2, c3));
                bb = _mm256_shuffle_epi8(bb, tr4);
                _mm256_store_si256((__m256i *)tmp, bb);
                uint8_t *oo = o + k * R;
                for (int l = 0; l < 4; l++) memcpy(oo + l * R, tmp + l, 4);
                for (int l = 0; l < 4; l++) memcpy(oo + (l + 4) * R, tmp + 4 + l, 4);
            }
        }
        for (; r < b1; r++) {
            const float *p = w + r * d_out + j0;
            uint8_t *o = buf + (r - r0);
            for (int64_t k = 0; k < jv; k += 8) {
                __m256i c = qz_codes8(MODE, _mm256_div_ps(_mm256_loadu_ps(p + k), _mm256_loadu_ps(dv + k)),
                                      _mm256_loadu_ps(kp + k), qmax, nqmax, coff);
                _mm256_store_si256((__m256i *)tmp, c);
                for (int l = 0; l < 8; l++) o[(k + l) * R] = (uint8_t)tmp[l];
            }
        }
    }
}

FDL_TARGET_AVX2 static void qz_tile_avx2(const qz_t *z, const float *w, int64_t j0, int64_t jw,
                                          int64_t r0, int64_t r1, uint8_t *buf, int64_t R,
                                          float *scales, float *msc) {
    if (z->nf4) qz_tile_avx2_m(0, z, w, j0, jw, r0, r1, buf, R, scales, msc);
    else if (z->floor_) qz_tile_avx2_m(1, z, w, j0, jw, r0, r1, buf, R, scales, msc);
    else qz_tile_avx2_m(2, z, w, j0, jw, r0, r1, buf, R, scales, msc);
}
#endif

/* codes c[0..len) of a row segment starting at value r0 (r0 % 64 == 0) -> packed bytes */
static void qz_pack(const uint8_t *c, int64_t r0, int64_t len, int64_t d_in, uint8_t *row) {
    int64_t G = d_in >> 6;
    int64_t i = 0;
    uint8_t *o = row + r0 / 2;
    for (; i + 64 <= len && (r0 + i) / 64 < G; i += 64) {
        for (int t = 0; t < 32; t++) o[t] = (uint8_t)(c[i + t] | (c[i + t + 32] << 4));
        o += 32;
    }
    if (i < len) {   /* the short last group */
        int64_t g = len - i, h = (g + 1) / 2;
        for (int64_t t = 0; t < h; t++)
            o[t] = (uint8_t)(c[i + t] | (t + h < g ? (c[i + t + h] << 4) : 0));
    }
}

static int64_t gcd64(int64_t a, int64_t b) { while (b) { int64_t t = a % b; a = b; b = t; } return a; }

int fdl_qk_quantize(const float *w, int64_t d_in, int64_t d_out, int bits, int nf4, int64_t bs,
                    int floor_, int per_tensor, uint8_t *data, float *scales, int nthreads,
                    int level) {
    qz_t z;
    z.bits = bits; z.nf4 = nf4; z.floor_ = floor_; z.per_tensor = per_tensor;
    z.d_in = d_in; z.d_out = d_out; z.bs = per_tensor ? d_in : bs;
    z.nb = per_tensor ? 1 : (d_in + bs - 1) / bs;
    z.qmax = (float)((1 << (bits - 1)) - 1);
    z.coff = (bits <= 4 && !nf4) ? (1 << (bits - 1)) : 0;
    z.gscale = 0.0f;
    if (per_tensor) {
        uint32_t mb = 0;
        int64_t total = d_in * d_out;
        int nt = qk_threads(nthreads, total * 4, total / 65536);
        #pragma omp parallel for num_threads(nt) reduction(max:mb) schedule(static)
        for (int64_t i = 0; i < total; i++) {
            uint32_t a = abs_bits(w[i]);
            mb = a > mb ? a : mb;
        }
        z.gscale = qz_scale(&z, bits_float(mb));
        scales[0] = z.gscale;
    }
    /* row chunk: a multiple of 64 (packing groups) and of the block size; column strips
     * wide enough for long contiguous reads of W rows */
    int64_t R;
    if (per_tensor) {
        R = 64;
    } else {
        int64_t L = bs / gcd64(bs, 64) * 64;
        R = L * (L >= 64 ? 1 : 64 / L);
    }
    if (R > d_in) R = d_in;
    int64_t JS = (int64_t)1 << 20;
    JS = JS / R;
    JS = JS > QZ_JS ? QZ_JS : JS < 8 ? 8 : JS;
    JS &= ~(int64_t)7;
    {   /* at least one strip per thread */
        int64_t per = (d_out + (nthreads > 0 ? nthreads : 1) - 1) / (nthreads > 0 ? nthreads : 1);
        per = (per + 7) & ~(int64_t)7;
        if (per < JS) JS = per < 8 ? 8 : per;
    }
    int64_t nstrips = (d_out + JS - 1) / JS;
    int64_t rowb = bits > 4 ? d_in : 32 * (d_in / 64) + (d_in % 64 + 1) / 2;
    int nt = qk_threads(nthreads, d_in * d_out * 4, nstrips);
    int fail = 0;
    #pragma omp parallel num_threads(nt)
    {
        uint8_t *buf = (uint8_t *)malloc((size_t)(JS * R));
        float *msc = (float *)malloc((size_t)(2 * JS) * sizeof(float));
        if (!buf || !msc) {
            #pragma omp atomic write
            fail = 1;
        }
        #pragma omp for schedule(static)
        for (int64_t s = 0; s < nstrips; s++) {
            if (!buf || !msc) continue;
            int64_t j0 = s * JS, jw = d_out - j0 < JS ? d_out - j0 : JS;
            for (int64_t r0 = 0; r0 < d_in; r0 += R) {
                int64_t r1 = r0 + R < d_in ? r0 + R : d_in;
#if FDL_HAVE_AVX2_TARGET
                if (level >= FDL_SIMD_AVX2)
                    qz_tile_avx2(&z, w, j0, jw, r0, r1, buf, R, scales, msc);
                else
#endif
                    qz_tile_scalar(&z, w, j0, jw, r0, r1, buf, R, scales);
                for (int64_t jj = 0; jj < jw; jj++) {
                    uint8_t *row = data + (j0 + jj) * rowb;
                    if (bits > 4) memcpy(row + r0, buf + jj * R, (size_t)(r1 - r0));
                    else qz_pack(buf + jj * R, r0, r1 - r0, d_in, row);
                }
            }
        }
        free(buf);
        free(msc);
    }
    return fail ? -1 : 0;
}

/* ================================================================ decoding */

/* values s*unit of storage row j, rows [r0, r1) (r0 % 64 == 0) -> dst[0..r1-r0) */
static void dec_range_scalar(const fdl_qk_desc *q, int64_t j, int64_t r0, int64_t r1, float *dst) {
    const uint8_t *row = q->data + j * q->rowb;
    int64_t bprev = -1;
    float s = 0.0f;
    qk_bcur bc = qk_bcur_init(q, r0);
    for (int64_t r = r0; r < r1; r++) {
        int64_t b = qk_bcur_at(&bc, r);
        if (b != bprev) { s = qk_scale(q, j, b); bprev = b; }
        dst[r - r0] = s * qk_unit(q, row, r);
    }
}

#if FDL_HAVE_AVX2_TARGET
/* 8 units of a half: p = the 8 bytes; hi = high nibbles */
FDL_TARGET_AVX2 static ALWAYS_INLINE __m256 unit8(const int kind, const uint8_t *p, const int hi,
                                                  __m256 off, __m256 cblo, __m256 cbhi) {
    if (kind == K_INT8)
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
    __m256i w = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    w = hi ? _mm256_srli_epi32(w, 4) : _mm256_and_si256(w, _mm256_set1_epi32(15));
    if (kind == K_LIN)
        return _mm256_sub_ps(_mm256_castsi256_ps(_mm256_or_si256(w, _mm256_set1_epi32(0x4B000000))),
                             off);
    __m256 a = _mm256_permutevar8x32_ps(cblo, w), b = _mm256_permutevar8x32_ps(cbhi, w);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(w, 28)));
}

/* bytes of half H of a row */
static ALWAYS_INLINE const uint8_t *half_ptr(const int kind, const uint8_t *row, int64_t H) {
    return kind == K_INT8 ? row + 32 * H : row + 32 * (H >> 1);
}

#define UNIT_CONSTS(q)                                                                      \
    const __m256 off = _mm256_set1_ps(8388608.0f + (float)(1 << ((q)->bits - 1)));        \
    const __m256 cblo = _mm256_loadu_ps(NF4_CB), cbhi = _mm256_loadu_ps(NF4_CB + 8);

FDL_TARGET_AVX2 static void dec_range_avx2(const fdl_qk_desc *q, int64_t j, int64_t r0, int64_t r1,
                                           float *dst) {
    const int kind = qk_kind(q);
    const uint8_t *row = q->data + j * q->rowb;
    UNIT_CONSTS(q)
    int64_t nH = qk_halves(q);
    int64_t H = r0 / 32, Hend = r1 / 32 < nH ? r1 / 32 : nH;
    int64_t bprev = -1;
    __m256 sv = _mm256_setzero_ps();
    qk_bcur bc = qk_bcur_init(q, 32 * H);
    for (; H < Hend; H++) {
        int64_t r = 32 * H, b = qk_bcur_at(&bc, r);
        if (r + 31 >= bc.hi) {
            dec_range_scalar(q, j, r, r + 32, dst + (r - r0));
            continue;
        }
        if (b != bprev) { sv = _mm256_set1_ps(qk_scale(q, j, b)); bprev = b; }
        const uint8_t *p = half_ptr(kind, row, H);
        float *o = dst + (r - r0);
        if (kind == K_INT8) {
            for (int v = 0; v < 4; v++)
                _mm256_storeu_ps(o + 8 * v, _mm256_mul_ps(sv, unit8(K_INT8, p + 8 * v, 0, off, cblo, cbhi)));
        } else if (kind == K_LIN) {
            if (H & 1) for (int v = 0; v < 4; v++)
                _mm256_storeu_ps(o + 8 * v, _mm256_mul_ps(sv, unit8(K_LIN, p + 8 * v, 1, off, cblo, cbhi)));
            else for (int v = 0; v < 4; v++)
                _mm256_storeu_ps(o + 8 * v, _mm256_mul_ps(sv, unit8(K_LIN, p + 8 * v, 0, off, cblo, cbhi)));
        } else {
            if (H & 1) for (int v = 0; v < 4; v++)
                _mm256_storeu_ps(o + 8 * v, _mm256_mul_ps(sv, unit8(K_NF4, p + 8 * v, 1, off, cblo, cbhi)));
            else for (int v = 0; v < 4; v++)
                _mm256_storeu_ps(o + 8 * v, _mm256_mul_ps(sv, unit8(K_NF4, p + 8 * v, 0, off, cblo, cbhi)));
        }
    }
    int64_t rs = 32 * H > r0 ? 32 * H : r0;
    if (rs < r1) dec_range_scalar(q, j, rs, r1, dst + (rs - r0));
}
#endif

static void dec_range(const fdl_qk_desc *q, int64_t j, int64_t r0, int64_t r1, float *dst,
                      int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX2) { dec_range_avx2(q, j, r0, r1, dst); return; }
#endif
    (void)level;
    dec_range_scalar(q, j, r0, r1, dst);
}

/* a row range of storage row j as doubles (exact casts of the float32 values) */
static void dec_range_f64(const fdl_qk_desc *q, int64_t j, int64_t r0, int64_t r1, double *dst,
                          int level) {
    float tmp[512];
    for (int64_t a = r0; a < r1; a += 512) {
        int64_t e = a + 512 < r1 ? a + 512 : r1;
        dec_range(q, j, a, e, tmp, level);
        for (int64_t r = a; r < e; r++) dst[r - r0] = (double)tmp[r - a];
    }
}

#define DQ_JS 16
#define DQ_R 256

int fdl_qk_dequantize(const fdl_qk_desc *q, void *out, int f64, int nthreads, int level) {
    int64_t d_in = q->d_in, d_out = q->d_out;
    int64_t nstrips = (d_out + DQ_JS - 1) / DQ_JS;
    int nt = qk_threads(nthreads, d_in * d_out * 4, nstrips);
    #pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t s = 0; s < nstrips; s++) {
        float buf[DQ_JS * DQ_R];
        int64_t j0 = s * DQ_JS, jw = d_out - j0 < DQ_JS ? d_out - j0 : DQ_JS;
        for (int64_t r0 = 0; r0 < d_in; r0 += DQ_R) {
            int64_t r1 = r0 + DQ_R < d_in ? r0 + DQ_R : d_in;
            for (int64_t jj = 0; jj < jw; jj++) dec_range(q, j0 + jj, r0, r1, buf + jj * DQ_R, level);
            if (f64) {
                double *o = (double *)out;
                for (int64_t r = r0; r < r1; r++)
                    for (int64_t jj = 0; jj < jw; jj++)
                        o[r * d_out + j0 + jj] = (double)buf[jj * DQ_R + r - r0];
            } else {
                float *o = (float *)out;
                for (int64_t r = r0; r < r1; r++)
                    for (int64_t jj = 0; jj < jw; jj++)
                        o[r * d_out + j0 + jj] = buf[jj * DQ_R + r - r0];
            }
        }
    }
    return 0;
}

/* ================================================ qmatmul, small n, y = x W */

/* The scalar tail of one (row, column) dot product: values [rs, d_in). */
static NOINLINE float mv_tail(const fdl_qk_desc *q, const uint8_t *row, int64_t j, const float *x,
                              int64_t rs) {
    float tot = 0.0f, acc = 0.0f;
    if (rs >= q->d_in) return tot;
    int64_t b = qk_block(q, rs);
    qk_bcur bc = qk_bcur_init(q, rs);
    for (int64_t r = rs; r < q->d_in; r++) {
        int64_t bb = qk_bcur_at(&bc, r);
        if (bb != b) {
            tot = tot + acc * qk_scale(q, j, b);
            acc = 0.0f;
            b = bb;
        }
        acc = acc + x[r] * qk_unit(q, row, r);
    }
    return tot + acc * qk_scale(q, j, b);
}

/* NF4, n = 1: the value of vector v, lane l of a 32-value half (the order the pshufb
 * lookup + byte/word interleaves produce); the other kinds use lane order 8v + l */
static inline int64_t qk_lane_idx(int v, int l) { return l < 4 ? 4 * v + l : 16 + 4 * v + (l - 4); }

/* fast part of one (row, column) product, scalar twin of the AVX2 lanes */
static float mv_fast_scalar(const fdl_qk_desc *q, const uint8_t *row, int64_t j, const float *x,
                            int64_t nHf, int64_t hpb) {
    float A[4][8], T[8];
    memset(A, 0, sizeof A);
    memset(T, 0, sizeof T);
    int64_t cnt = 0, b = 0;
    for (int64_t H = 0; H < nHf; H++) {
        for (int v = 0; v < 4; v++)
            for (int l = 0; l < 8; l++) {
                int64_t r = 32 * H + (q->nf4 ? qk_lane_idx(v, l) : 8 * v + l);
                A[v][l] = fmaf(x[r], qk_unit(q, row, r), A[v][l]);
            }
        if (++cnt == hpb || H + 1 == nHf) {
            float s = qk_scale(q, j, b);
            for (int l = 0; l < 8; l++) {
                float c = (A[0][l] + A[1][l]) + (A[2][l] + A[3][l]);
                T[l] = fmaf(c, s, T[l]);
                A[0][l] = A[1][l] = A[2][l] = A[3][l] = 0.0f;
            }
            cnt = 0;
            b++;
        }
    }
    return ((T[0] + T[4]) + (T[2] + T[6])) + ((T[1] + T[5]) + (T[3] + T[7]));
}

#if FDL_HAVE_AVX2_TARGET
FDL_TARGET_AVX2 static ALWAYS_INLINE float hsum8(__m256 t) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)); /* t0+t4.. */
    __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));     /* (t0+t4)+(t2+t6), (t1+t5)+(t3+t7) */
    __m128 c = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(c);
}

/* one half for NR rows: A[i][v] = fma(x, unit, A[i][v]) */
#define MV_HALF(KIND, HI, p, xo)                                                        \
    for (int v = 0; v < 4; v++) {                                                       \
        __m256 u = unit8(KIND, (p) + 8 * v, HI, off, cblo, cbhi);                      \
        for (int i = 0; i < NR; i++)                                                    \
            A[i][v] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i * ldx + (xo) + 8 * v), u, A[i][v]); \
    }

#define MV_FLUSH()                                                                      \
    if (++cnt == hpb || H + 1 == nHf) {                                                 \
        __m256 sv = _mm256_set1_ps(qk_scale(q, j, b));                                  \
        for (int i = 0; i < NR; i++) {                                                  \
            __m256 c = _mm256_add_ps(_mm256_add_ps(A[i][0], A[i][1]),                   \
                                     _mm256_add_ps(A[i][2], A[i][3]));                  \
            T[i] = _mm256_fmadd_ps(c, sv, T[i]);                                        \
            A[i][0] = A[i][1] = A[i][2] = A[i][3] = _mm256_setzero_ps();                \
        }                                                                               \
        cnt = 0;                                                                        \
        b++;                                                                            \
    }

FDL_TARGET_AVX2 static ALWAYS_INLINE void mv_fast_avx2(const fdl_qk_desc *q, const int kind,
                                                       const int NR, const uint8_t *row, int64_t j,
                                                       const float *x, int64_t ldx, int64_t nHf,
                                                       int64_t hpb, float *res) {
    UNIT_CONSTS(q)
    __m256 A[2][4], T[2];
    for (int i = 0; i < NR; i++) {
        T[i] = _mm256_setzero_ps();
        A[i][0] = A[i][1] = A[i][2] = A[i][3] = _mm256_setzero_ps();
    }
    int64_t cnt = 0, b = 0;
    if (kind == K_NF4) {
        /* x is permuted to the lane order (qk_lane_idx) of the lookup below */
        const uint8_t *lp = LUTP[q->nf4 ? 0 : q->bits][0];
        const __m256i P0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)lp));
        const __m256i P1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(lp + 16)));
        const __m256i P2 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(lp + 32)));
        const __m256i P3 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(lp + 48)));
        const __m256i m15 = _mm256_set1_epi8(15);
        (void)off; (void)cblo; (void)cbhi;
        for (int64_t H = 0; H < nHf; H++) {
            __m256i bb = _mm256_loadu_si256((const __m256i *)(row + 32 * (H >> 1)));
            __m256i c = (H & 1) ? _mm256_and_si256(_mm256_srli_epi16(bb, 4), m15)
                                : _mm256_and_si256(bb, m15);
            __m256i b0 = _mm256_shuffle_epi8(P0, c), b1 = _mm256_shuffle_epi8(P1, c);
            __m256i b2 = _mm256_shuffle_epi8(P2, c), b3 = _mm256_shuffle_epi8(P3, c);
            __m256i wl = _mm256_unpacklo_epi8(b0, b1), wh = _mm256_unpackhi_epi8(b0, b1);
            __m256i zl = _mm256_unpacklo_epi8(b2, b3), zh = _mm256_unpackhi_epi8(b2, b3);
            __m256 u[4];
            u[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(wl, zl));
            u[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(wl, zl));
            u[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(wh, zh));
            u[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(wh, zh));
            for (int v = 0; v < 4; v++)
                for (int i = 0; i < NR; i++)
                    A[i][v] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i * ldx + 32 * H + 8 * v), u[v], A[i][v]);
            MV_FLUSH()
        }
    } else if (kind == K_LIN) {
        /* nibble codes -> floats exactly: (2^23 | code) - (2^23 + offset); lanes in order */
        for (int64_t H = 0; H < nHf; H++) {
            const uint8_t *p = half_ptr(kind, row, H);
            if (H & 1) {
                MV_HALF(K_LIN, 1, p, 32 * H)
            } else {
                MV_HALF(K_LIN, 0, p, 32 * H)
            }
            MV_FLUSH()
        }
    } else {
        for (int64_t H = 0; H < nHf; H++) {
            const uint8_t *p = half_ptr(kind, row, H);
            MV_HALF(K_INT8, 0, p, 32 * H)
            MV_FLUSH()
        }
    }
    for (int i = 0; i < NR; i++) res[i] = hsum8(T[i]);
}
#endif

/* n >= 2: NR rows x NC columns against the decoded values (float32 s*unit) of the
 * columns: per (row, column) two lane accumulators, A0 for the vectors at offsets 0 and
 * 16 of each 32-value chunk, A1 for 8 and 24, A = fma(x, value, A) over the nV whole
 * chunks; result hsum8(A0 + A1) */
#if FDL_HAVE_AVX2_TARGET
FDL_TARGET_AVX2 static ALWAYS_INLINE void mvv_avx2(const int NR, const int NC, const float *val,
                                                   int64_t ldv, const float *x, int64_t ldx,
                                                   int64_t nV, float *res) {
    __m256 A[2][2][2];
    for (int i = 0; i < NR; i++)
        for (int c = 0; c < NC; c++) A[i][c][0] = A[i][c][1] = _mm256_setzero_ps();
    for (int64_t H = 0; H < nV; H++) {
        for (int v = 0; v < 4; v++) {
            __m256 xv[2], uv[2];
            for (int i = 0; i < NR; i++) xv[i] = _mm256_loadu_ps(x + i * ldx + 32 * H + 8 * v);
            for (int c = 0; c < NC; c++) uv[c] = _mm256_loadu_ps(val + c * ldv + 32 * H + 8 * v);
            for (int i = 0; i < NR; i++)
                for (int c = 0; c < NC; c++)
                    A[i][c][v & 1] = _mm256_fmadd_ps(xv[i], uv[c], A[i][c][v & 1]);
        }
    }
    for (int i = 0; i < NR; i++)
        for (int c = 0; c < NC; c++) res[i * 2 + c] = hsum8(_mm256_add_ps(A[i][c][0], A[i][c][1]));
}

#define DEF_MVV(NAME, NRV, NCV)                                                          \
    FDL_TARGET_AVX2 static void NAME(const float *val, int64_t ldv, const float *x,       \
                                     int64_t ldx, int64_t nV, float *res) {               \
        mvv_avx2(NRV, NCV, val, ldv, x, ldx, nV, res);                                    \
    }
DEF_MVV(mvv_11, 1, 1)
DEF_MVV(mvv_12, 1, 2)
DEF_MVV(mvv_21, 2, 1)
DEF_MVV(mvv_22, 2, 2)
#endif

/* scalar twin of mvv_avx2 for one (row, column) */
static float mvv_scalar(const float *val, const float *x, int64_t nV) {
    float A[2][8];
    memset(A, 0, sizeof A);
    for (int64_t H = 0; H < nV; H++)
        for (int v = 0; v < 4; v++)
            for (int l = 0; l < 8; l++) {
                int64_t r = 32 * H + 8 * v + l;
                A[v & 1][l] = fmaf(x[r], val[r], A[v & 1][l]);
            }
    float T[8];
    for (int l = 0; l < 8; l++) T[l] = A[0][l] + A[1][l];
    return ((T[0] + T[4]) + (T[2] + T[6])) + ((T[1] + T[5]) + (T[3] + T[7]));
}

/* the values after the whole chunks, in order */
static NOINLINE float mvv_tail(const float *val, const float *x, int64_t r0, int64_t d_in) {
    float acc = 0.0f;
    for (int64_t r = r0; r < d_in; r++) acc = acc + x[r] * val[r];
    return acc;
}

#if FDL_HAVE_AVX2_TARGET
#define DEF_MV(NAME, KIND, NRV)                                                          \
    FDL_TARGET_AVX2 static void NAME(const fdl_qk_desc *q, const uint8_t *row, int64_t j, \
                                     const float *x, int64_t ldx, int64_t nHf, int64_t hpb, \
                                     float *res) {                                       \
        mv_fast_avx2(q, KIND, NRV, row, j, x, ldx, nHf, hpb, res);                       \
    }
DEF_MV(mv_i8_1, K_INT8, 1)
DEF_MV(mv_lin_1, K_LIN, 1)
DEF_MV(mv_nf4_1, K_NF4, 1)
typedef void (*mv_fn)(const fdl_qk_desc *, const uint8_t *, int64_t, const float *, int64_t,
                      int64_t, int64_t, float *);
#endif

/* float64 activations: per column, the float32 values decoded once, double dot
 * products (4 partial sums) */
static void mv_col_f64(const fdl_qk_desc *q, int64_t j, const double *x, int64_t n, double *y,
                       float *vbuf, int level) {
    int64_t d_in = q->d_in;
    dec_range(q, j, 0, d_in, vbuf, level);
    for (int64_t i = 0; i < n; i++) {
        const double *xi = x + i * d_in;
        double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        int64_t r = 0;
        for (; r + 4 <= d_in; r += 4) {
            a0 += xi[r] * (double)vbuf[r]; a1 += xi[r + 1] * (double)vbuf[r + 1];
            a2 += xi[r + 2] * (double)vbuf[r + 2]; a3 += xi[r + 3] * (double)vbuf[r + 3];
        }
        for (; r < d_in; r++) a0 += xi[r] * (double)vbuf[r];
        y[i * q->d_out + j] = (a0 + a1) + (a2 + a3);
    }
}

static int mv_small(const fdl_qk_desc *q, const void *xv, int64_t n, void *yv, int f64,
                    int nthreads, int level) {
    int64_t d_in = q->d_in, d_out = q->d_out;
    int fast = q->per_tensor || q->bs % 32 == 0;
    int64_t nHf = fast ? qk_halves(q) : 0;
    int64_t hpb = q->per_tensor ? INT64_MAX : q->bs / 32;
    int nt = qk_threads(nthreads, d_in * d_out * n, d_out);
    int fail = 0;
    (void)level;
    if (f64) {
        const double *x = (const double *)xv;
        double *y = (double *)yv;
        #pragma omp parallel num_threads(nt)
        {
            float *ubuf = (float *)malloc((size_t)d_in * sizeof(float));
            if (!ubuf) {
                #pragma omp atomic write
                fail = 1;
            }
            #pragma omp for schedule(static)
            for (int64_t j = 0; j < d_out; j++)
                if (ubuf) mv_col_f64(q, j, x, n, y, ubuf, level);
            free(ubuf);
        }
        return fail ? -1 : 0;
    }
    const float *x = (const float *)xv;
    float *y = (float *)yv;
#if FDL_HAVE_AVX2_TARGET
    mv_fn f1 = NULL;
    if (level >= FDL_SIMD_AVX2) {
        int kind = qk_kind(q);
        f1 = kind == K_INT8 ? mv_i8_1 : kind == K_LIN ? mv_lin_1 : mv_nf4_1;
    }
#endif
    /* n >= 2: x with a padded row stride (rows d_in apart share L1 sets) */
    int64_t ldp = d_in + 16, nV = d_in / 32;
    float *xp = NULL;
    if (n >= 2) {
        xp = (float *)malloc((size_t)(n * ldp) * sizeof(float));
        if (!xp) return -1;
        for (int64_t i = 0; i < n; i++) memcpy(xp + i * ldp, x + i * d_in, (size_t)d_in * sizeof(float));
    }
    /* n = 1, nibble kinds, AVX2: x in the lookup's lane order */
    float *xl = NULL;
#if FDL_HAVE_AVX2_TARGET
    if (n == 1 && f1 && nHf > 0 && q->nf4) {
        xl = (float *)malloc((size_t)(32 * nHf) * sizeof(float));
        if (!xl) { free(xp); return -1; }
        for (int64_t H = 0; H < nHf; H++)
            for (int v = 0; v < 4; v++)
                for (int l = 0; l < 8; l++) xl[32 * H + 8 * v + l] = x[32 * H + qk_lane_idx(v, l)];
    }
#endif
    int64_t npairs = (d_out + 1) / 2;
    #pragma omp parallel num_threads(nt)
    {
        float *val = NULL;
        if (n >= 2) {
            val = (float *)malloc((size_t)(2 * ldp) * sizeof(float));
            if (!val) {
                #pragma omp atomic write
                fail = 1;
            }
        }
        #pragma omp for schedule(static)
        for (int64_t jp = 0; jp < npairs; jp++) {
            int64_t j0 = 2 * jp, nc = d_out - j0 < 2 ? 1 : 2;
            if (n == 1) {
                /* factored: per-block unit sums times the block scale */
                for (int64_t j = j0; j < j0 + nc; j++) {
                    const uint8_t *row = q->data + j * q->rowb;
                    float res;
#if FDL_HAVE_AVX2_TARGET
                    if (f1 && nHf > 0) f1(q, row, j, xl ? xl : x, d_in, nHf, hpb, &res);
                    else
#endif
                        res = nHf > 0 ? mv_fast_scalar(q, row, j, x, nHf, hpb) : 0.0f;
                    if (32 * nHf < d_in) res = res + mv_tail(q, row, j, x, 32 * nHf);
                    y[j] = res;
                }
                continue;
            }
            if (!val) continue;                 /* out of memory: reported below */
            for (int64_t c = 0; c < nc; c++) dec_range(q, j0 + c, 0, d_in, val + c * ldp, level);
            int64_t i = 0;
            float res[4];
#if FDL_HAVE_AVX2_TARGET
            if (level >= FDL_SIMD_AVX2) {
                for (; i + 2 <= n; i += 2) {
                    if (nc == 2) mvv_22(val, ldp, xp + i * ldp, ldp, nV, res);
                    else mvv_21(val, ldp, xp + i * ldp, ldp, nV, res);
                    for (int64_t c = 0; c < nc; c++) {
                        y[i * d_out + j0 + c] = res[c];
                        y[(i + 1) * d_out + j0 + c] = res[2 + c];
                    }
                }
                for (; i < n; i++) {
                    if (nc == 2) mvv_12(val, ldp, xp + i * ldp, ldp, nV, res);
                    else mvv_11(val, ldp, xp + i * ldp, ldp, nV, res);
                    for (int64_t c = 0; c < nc; c++) y[i * d_out + j0 + c] = res[c];
                }
            }
#endif
            for (; i < n; i++)
                for (int64_t c = 0; c < nc; c++)
                    y[i * d_out + j0 + c] = mvv_scalar(val + c * ldp, xp + i * ldp, nV);
            if (32 * nV < d_in)
                for (i = 0; i < n; i++)
                    for (int64_t c = 0; c < nc; c++)
                        y[i * d_out + j0 + c] = y[i * d_out + j0 + c] +
                            mvv_tail(val + c * ldp, xp + i * ldp, 32 * nV, d_in);
        }
        free(val);
    }
    free(xl);
    free(xp);
    return fail ? -1 : 0;
}

/* ========================================== qmatmul, small n, y = x W^T */

/* elementwise: y[i, r] = fma(x[i, j] * s, unit, y[i, r]) for r in [a, e) */
static NOINLINE void mt_scalar_range(const fdl_qk_desc *q, const uint8_t *row, int64_t j,
                                     const float *x, int64_t n, float *y, int64_t ldy,
                                     int64_t yoff, int64_t a, int64_t e) {
    int64_t d_out = q->d_out;
    int64_t bprev = -1;
    float s = 0.0f;
    qk_bcur bc = qk_bcur_init(q, a);
    for (int64_t r = a; r < e; r++) {
        int64_t b = qk_bcur_at(&bc, r);
        if (b != bprev) { s = qk_scale(q, j, b); bprev = b; }
        float u = qk_unit(q, row, r);
        for (int64_t i = 0; i < n; i++) {
            float c = x[i * d_out + j] * s;
            y[i * ldy + r - yoff] = fmaf(c, u, y[i * ldy + r - yoff]);
        }
    }
}

#if FDL_HAVE_AVX2_TARGET
/* JB storage rows j..j+JB-1 at once: per element the same fma sequence (j in order) as
 * one row at a time, with one load and store of y per JB fmas */
#define MT_HALF(KIND, HI)                                                                \
    for (int v = 0; v < 4; v++) {                                                        \
        __m256 u[4];                                                                     \
        for (int jj = 0; jj < JB; jj++) u[jj] = unit8(KIND, p[jj] + 8 * v, HI, off, cblo, cbhi); \
        for (int64_t i = 0; i < n; i++) {                                                \
            float *yp = y + i * ldy + (r - yoff) + 8 * v;                                \
            __m256 yv = _mm256_loadu_ps(yp);                                             \
            for (int jj = 0; jj < JB; jj++)                                              \
                yv = _mm256_fmadd_ps(_mm256_set1_ps(cs[jj * n + i]), u[jj], yv);         \
            _mm256_storeu_ps(yp, yv);                                                    \
        }                                                                                \
    }

FDL_TARGET_AVX2 static ALWAYS_INLINE void mt_row_avx2(const fdl_qk_desc *q, const int kind,
                                                      const int JB, int64_t j,
                                                      const float *x, int64_t n, float *y,
                                                      int64_t ldy, int64_t yoff,
                                                      int64_t a, int64_t e, float *cs) {
    UNIT_CONSTS(q)
    int64_t d_out = q->d_out;
    int64_t nH = qk_halves(q);
    int64_t H = a / 32, Hend = e / 32 < nH ? e / 32 : nH;
    int64_t bprev = -1;
    const uint8_t *rows[4];
    for (int jj = 0; jj < JB; jj++) rows[jj] = q->data + (j + jj) * q->rowb;
    qk_bcur bc = qk_bcur_init(q, 32 * H);
    for (; H < Hend; H++) {
        int64_t r = 32 * H, b = qk_bcur_at(&bc, r);
        if (r + 31 >= bc.hi) {
            for (int jj = 0; jj < JB; jj++)
                mt_scalar_range(q, rows[jj], j + jj, x, n, y, ldy, yoff, r, r + 32);
            continue;
        }
        if (b != bprev) {
            for (int jj = 0; jj < JB; jj++) {
                float s = qk_scale(q, j + jj, b);
                for (int64_t i = 0; i < n; i++) cs[jj * n + i] = x[i * d_out + j + jj] * s;
            }
            bprev = b;
        }
        const uint8_t *p[4];
        for (int jj = 0; jj < JB; jj++) p[jj] = half_ptr(kind, rows[jj], H);
        if (kind == K_INT8) {
            MT_HALF(K_INT8, 0)
        } else if (H & 1) {
            MT_HALF(kind, 1)
        } else {
            MT_HALF(kind, 0)
        }
    }
    int64_t rs = 32 * H > a ? 32 * H : a;
    if (rs < e)
        for (int jj = 0; jj < JB; jj++)
            mt_scalar_range(q, rows[jj], j + jj, x, n, y, ldy, yoff, rs, e);
}

#define DEF_MT(NAME, KIND, JBV)                                                           \
    FDL_TARGET_AVX2 static void NAME(const fdl_qk_desc *q, int64_t j,                     \
                                     const float *x, int64_t n, float *y, int64_t ldy,     \
                                     int64_t yoff, int64_t a, int64_t e, float *cs) {      \
        mt_row_avx2(q, KIND, JBV, j, x, n, y, ldy, yoff, a, e, cs);                       \
    }
DEF_MT(mt_i8, K_INT8, 1)
DEF_MT(mt_lin, K_LIN, 1)
DEF_MT(mt_nf4, K_NF4, 1)
DEF_MT(mt_i8_4, K_INT8, 4)
DEF_MT(mt_lin_4, K_LIN, 4)
DEF_MT(mt_nf4_4, K_NF4, 4)
typedef void (*mt_fn)(const fdl_qk_desc *, int64_t, const float *, int64_t,
                      float *, int64_t, int64_t, int64_t, int64_t, float *);
#endif

static int mt_small(const fdl_qk_desc *q, const void *xv, int64_t n, void *yv, int f64,
                    int nthreads, int level) {
    int64_t d_in = q->d_in, d_out = q->d_out;
    /* row chunks of d_in (multiples of 64), at most RCH rows, at least one per thread */
    int64_t RCH = 8192 / (n < 1 ? 1 : n);
    RCH = RCH < 256 ? 256 : RCH > 2048 ? 2048 : RCH;
    RCH &= ~(int64_t)63;
    int64_t nch = (d_in + RCH - 1) / RCH;
    if (nch < nthreads && d_in * d_out * n >= 32768) nch = nthreads;
    int64_t ch = (d_in + nch - 1) / nch;
    ch = (ch + 63) & ~(int64_t)63;
    nch = (d_in + ch - 1) / ch;
    int nt = qk_threads(nthreads, d_in * d_out * n, nch);
    int fail = 0;
    (void)level;
    if (f64) {
        const double *x = (const double *)xv;
        double *y = (double *)yv;
        #pragma omp parallel num_threads(nt)
        {
            float *ubuf = (float *)malloc((size_t)ch * sizeof(float));
            if (!ubuf) {
                #pragma omp atomic write
                fail = 1;
            }
            #pragma omp for schedule(static)
            for (int64_t c = 0; c < nch; c++) {
                if (!ubuf) continue;
                int64_t a = c * ch, e = a + ch < d_in ? a + ch : d_in;
                for (int64_t i = 0; i < n; i++) memset(y + i * d_in + a, 0, (size_t)(e - a) * sizeof(double));
                for (int64_t j = 0; j < d_out; j++) {
                    dec_range(q, j, a, e, ubuf, level);
                    for (int64_t i = 0; i < n; i++) {
                        double c2 = x[i * d_out + j];
                        double *yi = y + i * d_in;
                        for (int64_t r = a; r < e; r++) yi[r] += c2 * (double)ubuf[r - a];
                    }
                }
            }
            free(ubuf);
        }
        return fail ? -1 : 0;
    }
    const float *x = (const float *)xv;
    float *y = (float *)yv;
#if FDL_HAVE_AVX2_TARGET
    mt_fn f = NULL, f4 = NULL;
    if (level >= FDL_SIMD_AVX2) {
        int kind = qk_kind(q);
        f = kind == K_INT8 ? mt_i8 : kind == K_LIN ? mt_lin : mt_nf4;
        f4 = kind == K_INT8 ? mt_i8_4 : kind == K_LIN ? mt_lin_4 : mt_nf4_4;
    }
#endif
    /* each chunk accumulates in a private buffer with a padded row stride (rows of y
     * are d_in apart: 4 KiB aliasing and L1 set conflicts for many rows) */
    int64_t ldb = ch + 16;
    #pragma omp parallel num_threads(nt)
    {
        float *cs = (float *)malloc((size_t)(4 * n) * sizeof(float));
        float *yb = (float *)malloc((size_t)(n * ldb) * sizeof(float));
        if (!cs || !yb) {
            #pragma omp atomic write
            fail = 1;
        }
        #pragma omp for schedule(static)
        for (int64_t c = 0; c < nch; c++) {
            if (!cs || !yb) continue;
            int64_t a = c * ch, e = a + ch < d_in ? a + ch : d_in;
            memset(yb, 0, (size_t)(n * ldb) * sizeof(float));
            int64_t j = 0;
#if FDL_HAVE_AVX2_TARGET
            if (f) {
                for (; j + 4 <= d_out; j += 4) f4(q, j, x, n, yb, ldb, a, a, e, cs);
                for (; j < d_out; j++) f(q, j, x, n, yb, ldb, a, a, e, cs);
            }
#endif
            for (; j < d_out; j++)
                mt_scalar_range(q, q->data + j * q->rowb, j, x, n, yb, ldb, a, a, e);
            for (int64_t i = 0; i < n; i++)
                memcpy(y + i * d_in + a, yb + i * ldb, (size_t)(e - a) * sizeof(float));
        }
        free(cs);
        free(yb);
    }
    return fail ? -1 : 0;
}

int fdl_qk_matmul_small(const fdl_qk_desc *q, const void *x, int64_t n, void *y, int f64,
                        int transpose, int nthreads, int level) {
    return transpose ? mt_small(q, x, n, y, f64, nthreads, level)
                     : mv_small(q, x, n, y, f64, nthreads, level);
}

/* ============================================== qmatmul, large n: BLAS */

int fdl_qk_matmul_large(const fdl_qk_desc *q, const void *x, int64_t n, void *y, int f64,
                        int transpose, int nthreads, int level, int64_t panel,
                        int decode_threads, fdl_sgemm_t sgemm, fdl_dgemm_t dgemm) {
    int64_t d_in = q->d_in, d_out = q->d_out;
    if (panel < 1) panel = 1;
    if (panel > d_out) panel = d_out;
    size_t esz = f64 ? sizeof(double) : sizeof(float);
    void *P = malloc((size_t)panel * (size_t)d_in * esz);
    if (!P) return -1;
    int nt = qk_threads(decode_threads < nthreads ? decode_threads : nthreads,
                        panel * d_in * (int64_t)esz, panel);
    int ni = (int)n, di = (int)d_in, doi = (int)d_out;
    for (int64_t j0 = 0; j0 < d_out; j0 += panel) {
        int64_t jn = d_out - j0 < panel ? d_out - j0 : panel;
        int jni = (int)jn;
        #pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t jj = 0; jj < jn; jj++) {
            if (f64) dec_range_f64(q, j0 + jj, 0, d_in, (double *)P + jj * d_in, level);
            else dec_range(q, j0 + jj, 0, d_in, (float *)P + jj * d_in, level);
        }
        if (!f64) {
            float one = 1.0f, beta = (transpose && j0 > 0) ? 1.0f : 0.0f;
            if (!transpose)
                sgemm("T", "N", &jni, &ni, &di, &one, (float *)P, &di, (float *)x, &di, &beta,
                      (float *)y + j0, &doi);
            else
                sgemm("N", "N", &di, &ni, &jni, &one, (float *)P, &di, (float *)x + j0, &doi,
                      &beta, (float *)y, &di);
        } else {
            double one = 1.0, beta = (transpose && j0 > 0) ? 1.0 : 0.0;
            if (!transpose)
                dgemm("T", "N", &jni, &ni, &di, &one, (double *)P, &di, (double *)x, &di, &beta,
                      (double *)y + j0, &doi);
            else
                dgemm("N", "N", &di, &ni, &jni, &one, (double *)P, &di, (double *)x + j0, &doi,
                      &beta, (double *)y, &di);
        }
    }
    free(P);
    return 0;
}
