/* AVX2 tier of the lookup-table kernels: the bodies of qlutk_body.h and the
 * override fdl_qlut_run_avx2 (twin: fdl_qlut_run_scalar in qlutk.c).  A tile's
 * 16 columns are two halves of 8 lanes, each run over the chunks on its own; a
 * 16-entry table is two vpermps (entries 0..7 and 8..15, indexed by the low 3
 * bits) blended on the nibble's bit 3 (moved to the sign bit). */
#include "qlutk_int.h"

#if FDL_HAVE_AVX2_TARGET
#define ATTR FDL_TARGET_AVX2
#define FN(name) fdl_qlut_##name##_avx2
#include "qlutk_body.h"

static ATTR QL_ALWAYS_INLINE void run256(const fdl_qlut_desc *q, const uint32_t *w, int64_t c0,
                                         int64_t c1, const float *tab, const float *sc,
                                         float *st, const int W, const int NF4) {
    const int64_t tpc = NF4 ? 512 : 128;
    for (int hf = 0; hf < 2; hf++) {
        __m256 A[8], Y;
        for (int i = 0; i < 2 * W; i++) A[i] = _mm256_loadu_ps(st + 16 * i + 8 * hf);
        Y = _mm256_loadu_ps(st + 128 + 8 * hf);
        ql_bcur bc = ql_bcur_init(q, c0);
        for (int64_t c = c0; c < c1; c++) {
            const uint32_t *wc = w + (c - c0) * W * 16 + 8 * hf;
            const float *tc = tab + (c - c0) * tpc;
            for (int k = 0; k < W; k++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(wc + 16 * k));
                for (int m = 0; m < 8; m++) {
                    const float *t = tc + 16 * (NF4 ? 8 * k + m : m);
                    __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(t), v);
                    __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(t + 8), v);
                    __m256 e = _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(v, 28)));
                    A[2 * k + (m >> 2)] = _mm256_add_ps(A[2 * k + (m >> 2)], e);
                    v = _mm256_srli_epi32(v, 4);
                }
            }
            if (c == bc.end) {
                __m256 s = _mm256_loadu_ps(sc + 16 * bc.b + 8 * hf), part;
                ql_bnext(q, &bc);
                if (NF4) {
                    part = _mm256_add_ps(
                        _mm256_add_ps(_mm256_add_ps(A[0], A[1]), _mm256_add_ps(A[2], A[3])),
                        _mm256_add_ps(_mm256_add_ps(A[4], A[5]), _mm256_add_ps(A[6], A[7])));
                } else {
                    part = _mm256_add_ps(A[0], A[1]);
                    for (int k = 1; k < W - 1; k++)
                        part = _mm256_add_ps(part, _mm256_mul_ps(_mm256_set1_ps((float)(1 << k)),
                                                                 _mm256_add_ps(A[2 * k], A[2 * k + 1])));
                    part = _mm256_sub_ps(part, _mm256_mul_ps(_mm256_set1_ps((float)(1 << (W - 1))),
                                                             _mm256_add_ps(A[2 * W - 2], A[2 * W - 1])));
                }
                Y = _mm256_add_ps(Y, _mm256_mul_ps(s, part));
                for (int i = 0; i < 2 * W; i++) A[i] = _mm256_setzero_ps();
            }
        }
        for (int i = 0; i < 2 * W; i++) _mm256_storeu_ps(st + 16 * i + 8 * hf, A[i]);
        _mm256_storeu_ps(st + 128 + 8 * hf, Y);
    }
}

/* twin: fdl_qlut_run_scalar (rmax 1: nr == 1) */
ATTR void fdl_qlut_run_avx2(const fdl_qlut_desc *q, const uint32_t *w, int64_t c0, int64_t c1,
                            const float *tab, int64_t ldt, int nr, const float *sc, float *st) {
    for (int r = 0; r < nr; r++) {
        const float *tr = tab + r * ldt;
        float *sr = st + r * FDL_QLUT_ST;
        if (q->nf4) run256(q, w, c0, c1, tr, sc, sr, 4, 1);
        else if (q->bits == 2) run256(q, w, c0, c1, tr, sc, sr, 2, 0);
        else if (q->bits == 3) run256(q, w, c0, c1, tr, sc, sr, 3, 0);
        else run256(q, w, c0, c1, tr, sc, sr, 4, 0);
    }
}
#endif
