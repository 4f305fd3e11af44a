/* bf16 compute, AVX512-BF16 kernels (vdpbf16ps).  Each is bitwise equal to its
 * scalar twin in qbf16k.c (the arithmetic is defined in qbf16k.h): the
 * instruction adds the odd product, then the even one, per lane, each rounded,
 * denormals flushed, which is what the twins emulate; the lane scales are applied
 * with one fma per lane, the tree is the twins' order.  Called only when
 * fdl_qb_cpu_bf16() (the pyx checks it and the pinned SIMD level). */
#include "qbf16k.h"
#include "quantk_int.h"

#if FDL_HAVE_AVX2_TARGET
#define QB_TARGET \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")))

static inline const uint16_t *qb_table(const fdl_qk_desc *q) {
    return fdl_qb_units[q->nf4 ? 0 : (q->bits <= 4 ? q->bits : 4)];
}

#define QB_DP(acc, a, b) _mm512_dpbf16_ps((acc), (__m512bh)(a), (__m512bh)(b))

/* lanes 0-7: s[b[0]], lanes 8-15: s[b[1]] */
QB_TARGET static ALWAYS_INLINE __m512 qb_lanes(const float *s, const int32_t *b) {
    return _mm512_mask_mov_ps(_mm512_set1_ps(s[b[0]]), 0xFF00, _mm512_set1_ps(s[b[1]]));
}

/* twin: qb_tree */
QB_TARGET static ALWAYS_INLINE float qb_tree(__m512 T0, __m512 T1) {
    __m512 v = _mm512_add_ps(T0, T1);
    __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 a4 = _mm_add_ps(_mm256_castps256_ps128(a8), _mm256_extractf128_ps(a8, 1));
    __m128 a2 = _mm_add_ps(a4, _mm_movehl_ps(a4, a4));
    return _mm_cvtss_f32(_mm_add_ss(a2, _mm_shuffle_ps(a2, a2, 1)));
}

/* the four nibble vectors of a quad: v[a + 2e] is vector e of step 2s + a.  w0: the
 * quad's 64 bytes as words; w1: the bytes one further, so its words' low bytes are
 * w0's high bytes (vpermw reads 5 index bits and the table repeats after 16: the
 * bits above a nibble do not matter, so two shifts make the four indices) */
QB_TARGET static ALWAYS_INLINE void qb_nib4(__m512i w0, __m512i w1, __m512i tb, __m512i *v) {
    v[0] = _mm512_permutexvar_epi16(w0, tb);
    v[1] = _mm512_permutexvar_epi16(_mm512_srli_epi16(w0, 4), tb);
    v[2] = _mm512_permutexvar_epi16(w1, tb);
    v[3] = _mm512_permutexvar_epi16(_mm512_srli_epi16(w1, 4), tb);
}

/* quad s of a row of NQ quads (G groups): the last reads no byte past its groups */
QB_TARGET static ALWAYS_INLINE void qb_quad(const uint8_t *row, int64_t s, int64_t NQ,
                                            int64_t G, __m512i tb, __m512i *v) {
    const uint8_t *p = row + 64 * s;
    if (s + 1 < NQ) {
        qb_nib4(_mm512_loadu_si512(p), _mm512_loadu_si512(p + 1), tb, v);
    } else if (2 * s + 1 < G) {
        qb_nib4(_mm512_loadu_si512(p), _mm512_maskz_loadu_epi8(~0ull >> 1, p + 1), tb, v);
    } else {     /* the odd last group alone: zero bytes for the missing one */
        qb_nib4(_mm512_maskz_loadu_epi8(0xFFFFFFFFull, p),
                _mm512_maskz_loadu_epi8(0x7FFFFFFFull, p + 1), tb, v);
    }
}

/* the two vectors of an int8 step at p (64 values) */
QB_TARGET static ALWAYS_INLINE void qb_i8(const uint8_t *p, __m512i *v) {
    for (int e = 0; e < 2; e++) {
        __m128i l8 = _mm_loadu_si128((const __m128i *)(p + 16 * e));
        __m128i h8 = _mm_loadu_si128((const __m128i *)(p + 32 + 16 * e));
        /* integers up to 128 in magnitude: exact in bf16 */
        v[e] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(h8)),
                                            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(l8)));
    }
}

/* twin: qb_main_cols_scalar, 4-bit (MERGED: fdl_qb_merged) */
QB_TARGET static ALWAYS_INLINE void qb_cols4(const fdl_qk_desc *q, const uint16_t *xp,
                                             int64_t j0, const int JN, const int MERGED,
                                             const int32_t *lb, const float *bsc, int64_t ldb,
                                             float *res) {
    const __m512i tb = _mm512_loadu_si512(qb_table(q));
    const __m512 z = _mm512_setzero_ps();
    int64_t G = q->d_in / 64, NQ = (G + 1) / 2;
    const uint8_t *rows[FDL_QB_COLS];
    __m512 T[FDL_QB_COLS][2];
    for (int c = 0; c < JN; c++) {
        rows[c] = q->data + (j0 + c) * q->rowb;
        T[c][0] = T[c][1] = z;
    }
    for (int64_t s = 0; s < NQ; s++) {
        const uint16_t *x = xp + 128 * s;
        __m512i X0 = _mm512_loadu_si512(x), X1 = _mm512_loadu_si512(x + 32);
        __m512i X2 = _mm512_loadu_si512(x + 64), X3 = _mm512_loadu_si512(x + 96);
        for (int c = 0; c < JN; c++) {
            __m512i v[4];
            qb_quad(rows[c], s, NQ, G, tb, v);
            const float *sc = bsc + c * ldb;
            if (MERGED) {
                __m512 A = QB_DP(QB_DP(QB_DP(QB_DP(z, X0, v[0]), X1, v[2]), X2, v[1]), X3, v[3]);
                T[c][s & 1] = _mm512_fmadd_ps(A, qb_lanes(sc, lb + 4 * s), T[c][s & 1]);
            } else {
                __m512 A0 = QB_DP(QB_DP(z, X0, v[0]), X1, v[2]);
                __m512 A1 = QB_DP(QB_DP(z, X2, v[1]), X3, v[3]);
                T[c][0] = _mm512_fmadd_ps(A0, qb_lanes(sc, lb + 4 * s), T[c][0]);
                T[c][1] = _mm512_fmadd_ps(A1, qb_lanes(sc, lb + 4 * s + 2), T[c][1]);
            }
        }
    }
    for (int c = 0; c < JN; c++) res[c] = qb_tree(T[c][0], T[c][1]);
}

/* twin: qb_main_cols_scalar, int8 */
QB_TARGET static ALWAYS_INLINE void qb_cols8(const fdl_qk_desc *q, const uint16_t *xp,
                                             int64_t j0, const int JN, const int32_t *lb,
                                             const float *bsc, int64_t ldb, float *res) {
    const __m512 z = _mm512_setzero_ps();
    int64_t K = q->d_in / 64;
    const uint8_t *rows[FDL_QB_COLS];
    __m512 T[FDL_QB_COLS][2];
    for (int c = 0; c < JN; c++) {
        rows[c] = q->data + (j0 + c) * q->rowb;
        T[c][0] = T[c][1] = z;
    }
    for (int64_t k = 0; k < K; k++) {
        __m512i X0 = _mm512_loadu_si512(xp + 64 * k), X1 = _mm512_loadu_si512(xp + 64 * k + 32);
        for (int c = 0; c < JN; c++) {
            __m512i v[2];
            qb_i8(rows[c] + 64 * k, v);
            __m512 A = QB_DP(QB_DP(z, X0, v[0]), X1, v[1]);
            T[c][k & 1] = _mm512_fmadd_ps(A, qb_lanes(bsc + c * ldb, lb + 2 * k), T[c][k & 1]);
        }
    }
    for (int c = 0; c < JN; c++) res[c] = qb_tree(T[c][0], T[c][1]);
}

QB_TARGET static void qb_main_cols_avx512(const fdl_qk_desc *q, const uint16_t *xp, int64_t j0,
                                          int jn, const int32_t *lb, const float *bsc,
                                          int64_t ldb, float *res) {
    if (q->bits > 4) {
        switch (jn) {
        case 4: qb_cols8(q, xp, j0, 4, lb, bsc, ldb, res); break;
        case 3: qb_cols8(q, xp, j0, 3, lb, bsc, ldb, res); break;
        case 2: qb_cols8(q, xp, j0, 2, lb, bsc, ldb, res); break;
        default: qb_cols8(q, xp, j0, 1, lb, bsc, ldb, res); break;
        }
        return;
    }
    int m = fdl_qb_merged(q);
    switch (jn * 2 + m) {
    case 9: qb_cols4(q, xp, j0, 4, 1, lb, bsc, ldb, res); break;
    case 8: qb_cols4(q, xp, j0, 4, 0, lb, bsc, ldb, res); break;
    case 7: qb_cols4(q, xp, j0, 3, 1, lb, bsc, ldb, res); break;
    case 6: qb_cols4(q, xp, j0, 3, 0, lb, bsc, ldb, res); break;
    case 5: qb_cols4(q, xp, j0, 2, 1, lb, bsc, ldb, res); break;
    case 4: qb_cols4(q, xp, j0, 2, 0, lb, bsc, ldb, res); break;
    case 3: qb_cols4(q, xp, j0, 1, 1, lb, bsc, ldb, res); break;
    default: qb_cols4(q, xp, j0, 1, 0, lb, bsc, ldb, res); break;
    }
}

/* twin: qb_decode_col_scalar */
QB_TARGET static void qb_decode_col_avx512(const fdl_qk_desc *q, int64_t j, uint16_t *wb) {
    const uint8_t *row = q->data + j * q->rowb;
    if (q->bits > 4) {
        for (int64_t k = 0; k < q->d_in / 64; k++) {
            __m512i v[2];
            qb_i8(row + 64 * k, v);
            _mm512_storeu_si512(wb + 64 * k, v[0]);
            _mm512_storeu_si512(wb + 64 * k + 32, v[1]);
        }
        return;
    }
    const __m512i tb = _mm512_loadu_si512(qb_table(q));
    int64_t G = q->d_in / 64, NQ = (G + 1) / 2;
    for (int64_t s = 0; s < NQ; s++) {
        __m512i v[4];
        qb_quad(row, s, NQ, G, tb, v);
        uint16_t *w = wb + 128 * s;
        _mm512_storeu_si512(w, v[0]);
        _mm512_storeu_si512(w + 32, v[2]);
        _mm512_storeu_si512(w + 64, v[1]);
        _mm512_storeu_si512(w + 96, v[3]);
    }
}

/* twin: qb_main_dec_scalar */
QB_TARGET static ALWAYS_INLINE void qb_dec_n(const uint16_t *wb, int64_t ldw, const int JN,
                                             int64_t nsteps, const int MERGED,
                                             const uint16_t *xp, const int32_t *lb,
                                             const float *bsc, int64_t ldb, float *res) {
    const __m512 z = _mm512_setzero_ps();
    __m512 T[FDL_QB_COLS][2], A[FDL_QB_COLS];
    for (int c = 0; c < JN; c++) T[c][0] = T[c][1] = A[c] = z;
    for (int64_t k = 0; k < nsteps; k++) {
        __m512i X0 = _mm512_loadu_si512(xp + 64 * k), X1 = _mm512_loadu_si512(xp + 64 * k + 32);
        for (int c = 0; c < JN; c++) {
            const uint16_t *w = wb + c * ldw + 64 * k;
            if (!MERGED || !(k & 1)) A[c] = z;
            A[c] = QB_DP(QB_DP(A[c], X0, _mm512_loadu_si512(w)), X1, _mm512_loadu_si512(w + 32));
            if (MERGED && !(k & 1)) continue;
            int t = MERGED ? (int)((k >> 1) & 1) : (int)(k & 1);
            T[c][t] = _mm512_fmadd_ps(A[c], qb_lanes(bsc + c * ldb, lb + 2 * k), T[c][t]);
        }
    }
    for (int c = 0; c < JN; c++) res[c] = qb_tree(T[c][0], T[c][1]);
}

QB_TARGET static void qb_main_dec_avx512(const uint16_t *wb, int64_t ldw, int jn, int64_t nsteps,
                                         int merged, const uint16_t *xp, const int32_t *lb,
                                         const float *bsc, int64_t ldb, float *res) {
    switch (jn * 2 + (merged != 0)) {
    case 9: qb_dec_n(wb, ldw, 4, nsteps, 1, xp, lb, bsc, ldb, res); break;
    case 8: qb_dec_n(wb, ldw, 4, nsteps, 0, xp, lb, bsc, ldb, res); break;
    case 7: qb_dec_n(wb, ldw, 3, nsteps, 1, xp, lb, bsc, ldb, res); break;
    case 6: qb_dec_n(wb, ldw, 3, nsteps, 0, xp, lb, bsc, ldb, res); break;
    case 5: qb_dec_n(wb, ldw, 2, nsteps, 1, xp, lb, bsc, ldb, res); break;
    case 4: qb_dec_n(wb, ldw, 2, nsteps, 0, xp, lb, bsc, ldb, res); break;
    case 3: qb_dec_n(wb, ldw, 1, nsteps, 1, xp, lb, bsc, ldb, res); break;
    default: qb_dec_n(wb, ldw, 1, nsteps, 0, xp, lb, bsc, ldb, res); break;
    }
}

const fdl_qb_kernels fdl_qb_kernels_avx512bf16 = {qb_main_cols_avx512, qb_decode_col_avx512,
                                                  qb_main_dec_avx512};
#endif
