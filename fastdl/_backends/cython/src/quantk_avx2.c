/* AVX2/FMA overrides of the decoding and small-n matmul kernels; each names its
 * scalar twin (quantk_dec.c, quantk_gemv.c, quantk_mt.c) and does the same
 * float32 operations in the same order per lane (fp-contract is off).
 *
 * Units: int8 by sign extension and int -> float; int2-4 by the 2^23 magic
 * number ((2^23 | code) - (2^23 + offset), exact); NF4 by a vpermps of the
 * codebook halves (decoding) or, in the n = 1 kernel, a pshufb lookup of the
 * codebook's byte planes, whose lane order is qk_lane_idx. */
#include "quantk_int.h"

#if FDL_HAVE_AVX2_TARGET

typedef struct { __m256 off, cblo, cbhi; } u8k;

FDL_TARGET_AVX2 static ALWAYS_INLINE u8k u8k_of(const fdl_qk_desc *q) {
    u8k k;
    k.off = _mm256_set1_ps(8388608.0f + (float)(1 << (q->bits - 1)));
    k.cblo = _mm256_loadu_ps(fdl_qk_nf4_cb);
    k.cbhi = _mm256_loadu_ps(fdl_qk_nf4_cb + 8);
    return k;
}

/* 8 units of a half: p = the 8 bytes; hi = high nibbles */
FDL_TARGET_AVX2 static ALWAYS_INLINE __m256 unit8(const int kind, const uint8_t *p, const int hi,
                                                  u8k k) {
    if (kind == K_INT8)
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
    __m256i w = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    w = hi ? _mm256_srli_epi32(w, 4) : _mm256_and_si256(w, _mm256_set1_epi32(15));
    if (kind == K_LIN)
        return _mm256_sub_ps(_mm256_castsi256_ps(_mm256_or_si256(w, _mm256_set1_epi32(0x4B000000))),
                             k.off);
    __m256 a = _mm256_permutevar8x32_ps(k.cblo, w), b = _mm256_permutevar8x32_ps(k.cbhi, w);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(w, 28)));
}

FDL_TARGET_AVX2 static ALWAYS_INLINE void dec_half(const int kind, const int hi, const uint8_t *p,
                                                   __m256 sv, float *o, u8k k) {
    for (int v = 0; v < 4; v++) _mm256_storeu_ps(o + 8 * v, _mm256_mul_ps(sv, unit8(kind, p + 8 * v, hi, k)));
}

/* twin: fdl_qk_dec_range_scalar */
FDL_TARGET_AVX2 void fdl_qk_dec_range_avx2(const fdl_qk_desc *q, int64_t j, int64_t r0, int64_t r1,
                                           float *dst) {
    const int kind = qk_kind(q);
    const uint8_t *row = q->data + j * q->rowb;
    const u8k k = u8k_of(q);
    int64_t nH = qk_halves(q);
    int64_t H = r0 / 32, Hend = r1 / 32 < nH ? r1 / 32 : nH;
    int64_t bprev = -1;
    __m256 sv = _mm256_setzero_ps();
    qk_bcur bc = qk_bcur_init(q, 32 * H);
    for (; H < Hend; H++) {
        int64_t r = 32 * H, b = qk_bcur_at(&bc, r);
        if (r + 31 >= bc.hi) {
            fdl_qk_dec_range_scalar(q, j, r, r + 32, dst + (r - r0));
            continue;
        }
        if (b != bprev) { sv = _mm256_set1_ps(qk_scale(q, j, b)); bprev = b; }
        const uint8_t *p = qk_half_ptr(kind, row, H);
        float *o = dst + (r - r0);
        if (kind == K_INT8) dec_half(K_INT8, 0, p, sv, o, k);
        else if (kind == K_LIN) { if (H & 1) dec_half(K_LIN, 1, p, sv, o, k); else dec_half(K_LIN, 0, p, sv, o, k); }
        else { if (H & 1) dec_half(K_NF4, 1, p, sv, o, k); else dec_half(K_NF4, 0, p, sv, o, k); }
    }
    int64_t rs = 32 * H > r0 ? 32 * H : r0;
    if (rs < r1) fdl_qk_dec_range_scalar(q, j, rs, r1, dst + (rs - r0));
}

FDL_TARGET_AVX2 static ALWAYS_INLINE float hsum8(__m256 t) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)); /* t0+t4.. */
    __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));     /* (t0+t4)+(t2+t6), (t1+t5)+(t3+t7) */
    __m128 c = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(c);
}

/* ---------------------------------------------------------------- n = 1 */

/* block end: T = fma((A0 + A1) + (A2 + A3), s, T), A = 0 */
FDL_TARGET_AVX2 static ALWAYS_INLINE void flush8(__m256 *A, __m256 *T, float s) {
    __m256 c = _mm256_add_ps(_mm256_add_ps(A[0], A[1]), _mm256_add_ps(A[2], A[3]));
    *T = _mm256_fmadd_ps(c, _mm256_set1_ps(s), *T);
    A[0] = A[1] = A[2] = A[3] = _mm256_setzero_ps();
}

/* one half of int8 / int2-4 units in lane order 8v + l: A[v] = fma(x, unit, A[v]) */
FDL_TARGET_AVX2 static ALWAYS_INLINE void mv_half(const int kind, const int hi, const uint8_t *p,
                                                  const float *x, __m256 *A, u8k k) {
    for (int v = 0; v < 4; v++)
        A[v] = _mm256_fmadd_ps(_mm256_loadu_ps(x + 8 * v), unit8(kind, p + 8 * v, hi, k), A[v]);
}

/* twin: fdl_qk_mv_fast_scalar (int8 and int2-4) */
FDL_TARGET_AVX2 static ALWAYS_INLINE void mv_fast(const fdl_qk_desc *q, const int kind,
                                                  const uint8_t *row, int64_t j, const float *x,
                                                  int64_t nHf, int64_t hpb, float *res) {
    const u8k k = u8k_of(q);
    __m256 A[4], T = _mm256_setzero_ps();
    A[0] = A[1] = A[2] = A[3] = _mm256_setzero_ps();
    int64_t cnt = 0, b = 0;
    for (int64_t H = 0; H < nHf; H++) {
        const uint8_t *p = qk_half_ptr(kind, row, H);
        if (kind == K_INT8) mv_half(K_INT8, 0, p, x + 32 * H, A, k);
        else if (H & 1) mv_half(K_LIN, 1, p, x + 32 * H, A, k);
        else mv_half(K_LIN, 0, p, x + 32 * H, A, k);
        if (++cnt == hpb || H + 1 == nHf) { flush8(A, &T, qk_scale(q, j, b)); cnt = 0; b++; }
    }
    *res = hsum8(T);
}

FDL_TARGET_AVX2 void fdl_qk_mv_i8_avx2(const fdl_qk_desc *q, const uint8_t *row, int64_t j,
                                       const float *x, int64_t nHf, int64_t hpb, float *res) {
    mv_fast(q, K_INT8, row, j, x, nHf, hpb, res);
}

FDL_TARGET_AVX2 void fdl_qk_mv_lin_avx2(const fdl_qk_desc *q, const uint8_t *row, int64_t j,
                                        const float *x, int64_t nHf, int64_t hpb, float *res) {
    mv_fast(q, K_LIN, row, j, x, nHf, hpb, res);
}

/* twin: fdl_qk_mv_fast_scalar (NF4; x in the lookup's lane order qk_lane_idx) */
FDL_TARGET_AVX2 void fdl_qk_mv_nf4_avx2(const fdl_qk_desc *q, const uint8_t *row, int64_t j,
                                        const float *x, int64_t nHf, int64_t hpb, float *res) {
    const uint8_t *lp = fdl_qk_unit_planes[0][0];
    const __m256i P0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)lp));
    const __m256i P1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(lp + 16)));
    const __m256i P2 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(lp + 32)));
    const __m256i P3 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(lp + 48)));
    const __m256i m15 = _mm256_set1_epi8(15);
    __m256 A[4], T = _mm256_setzero_ps();
    A[0] = A[1] = A[2] = A[3] = _mm256_setzero_ps();
    int64_t cnt = 0, b = 0;
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
            A[v] = _mm256_fmadd_ps(_mm256_loadu_ps(x + 32 * H + 8 * qk_xl_pos(v)), u[v], A[v]);
        if (++cnt == hpb || H + 1 == nHf) { flush8(A, &T, qk_scale(q, j, b)); cnt = 0; b++; }
    }
    *res = hsum8(T);
}

/* ---------------------------------------------------------------- n >= 2 */

/* NR rows x NC columns: A[i][c][v & 1] = fma(x, value, .) over the chunks */
FDL_TARGET_AVX2 static ALWAYS_INLINE void mvv_tile(const int NR, const int NC, const float *val,
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
        for (int c = 0; c < NC; c++)
            res[i * MV_COLS + c] = hsum8(_mm256_add_ps(A[i][c][0], A[i][c][1]));
}

/* twin: fdl_qk_mvv_scalar; columns two at a time */
FDL_TARGET_AVX2 void fdl_qk_mvv_avx2(const float *val, int64_t ldv, int nc, const float *x,
                                     int64_t ldx, int nr, int64_t nV, float *res) {
    for (int c = 0; c < nc; c += 2) {
        const float *v = val + c * ldv;
        float *o = res + c;
        if (nr == 2) {
            if (nc - c >= 2) mvv_tile(2, 2, v, ldv, x, ldx, nV, o);
            else mvv_tile(2, 1, v, ldv, x, ldx, nV, o);
        } else {
            if (nc - c >= 2) mvv_tile(1, 2, v, ldv, x, ldx, nV, o);
            else mvv_tile(1, 1, v, ldv, x, ldx, nV, o);
        }
    }
}

/* ---------------------------------------------------------------- transposed */

/* one half of JB storage rows: per element the same fma sequence (j in order) as one
 * row at a time, with one load and store of y per JB fmas */
FDL_TARGET_AVX2 static ALWAYS_INLINE void mt_half(const int kind, const int hi, const int JB,
                                                  const uint8_t *const *p, int64_t n, float *y,
                                                  int64_t ldy, const float *cs, u8k k) {
    for (int v = 0; v < 4; v++) {
        __m256 u[4];
        for (int jj = 0; jj < JB; jj++) u[jj] = unit8(kind, p[jj] + 8 * v, hi, k);
        for (int64_t i = 0; i < n; i++) {
            float *yp = y + i * ldy + 8 * v;
            __m256 yv = _mm256_loadu_ps(yp);
            for (int jj = 0; jj < JB; jj++)
                yv = _mm256_fmadd_ps(_mm256_set1_ps(cs[jj * n + i]), u[jj], yv);
            _mm256_storeu_ps(yp, yv);
        }
    }
}

FDL_TARGET_AVX2 static ALWAYS_INLINE void mt_rows(const fdl_qk_desc *q, const int kind,
                                                  const int JB, int64_t j, const float *x,
                                                  int64_t n, float *y, int64_t ldy, int64_t yoff,
                                                  int64_t a, int64_t e, float *cs) {
    const u8k k = u8k_of(q);
    int64_t nH = qk_halves(q);
    int64_t H = a / 32, Hend = e / 32 < nH ? e / 32 : nH;
    int64_t bprev = -1;
    const uint8_t *rows[4];
    for (int jj = 0; jj < JB; jj++) rows[jj] = q->data + (j + jj) * q->rowb;
    qk_bcur bc = qk_bcur_init(q, 32 * H);
    for (; H < Hend; H++) {
        if (!qk_mt_half_prep(q, rows, JB, j, x, n, y, ldy, yoff, H, &bc, &bprev, cs))
            continue;
        int64_t r = 32 * H;
        const uint8_t *p[4];
        for (int jj = 0; jj < JB; jj++) p[jj] = qk_half_ptr(kind, rows[jj], H);
        float *yr = y + (r - yoff);
        if (kind == K_INT8) mt_half(K_INT8, 0, JB, p, n, yr, ldy, cs, k);
        else if (H & 1) mt_half(kind, 1, JB, p, n, yr, ldy, cs, k);
        else mt_half(kind, 0, JB, p, n, yr, ldy, cs, k);
    }
    qk_mt_tail(q, rows, JB, j, x, n, y, ldy, yoff, H, a, e);
}

/* twin: fdl_qk_mt_rows_scalar; jb is 1 or 4 */
FDL_TARGET_AVX2 void fdl_qk_mt_rows_avx2(const fdl_qk_desc *q, int64_t j, int jb, const float *x,
                                         int64_t n, float *y, int64_t ldy, int64_t yoff, int64_t a,
                                         int64_t e, float *cs) {
    int kind = qk_kind(q);
    if (jb == 4) {
        if (kind == K_INT8) mt_rows(q, K_INT8, 4, j, x, n, y, ldy, yoff, a, e, cs);
        else if (kind == K_LIN) mt_rows(q, K_LIN, 4, j, x, n, y, ldy, yoff, a, e, cs);
        else mt_rows(q, K_NF4, 4, j, x, n, y, ldy, yoff, a, e, cs);
        return;
    }
    for (int jj = 0; jj < jb; jj++) {
        if (kind == K_INT8) mt_rows(q, K_INT8, 1, j + jj, x, n, y, ldy, yoff, a, e, cs);
        else if (kind == K_LIN) mt_rows(q, K_LIN, 1, j + jj, x, n, y, ldy, yoff, a, e, cs);
        else mt_rows(q, K_NF4, 1, j + jj, x, n, y, ldy, yoff, a, e, cs);
    }
}

#endif
