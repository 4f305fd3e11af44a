/* AVX-512 (F/BW/VL/DQ) overrides of the decoding and small-n matmul kernels;
 * each names its scalar twin and keeps its lane order: a 512-bit register holds
 * two of the twin's 8-lane vectors (A[v], A[v + 1]) and every lane sees the same
 * float32 operations in the same order (fp-contract is off), so the results are
 * bitwise those of the scalar and AVX2 kernels.
 *
 * Units, 16 per instruction: int8 by sign extension and int -> float; every
 * 4-bit kind (NF4 and int2-4 alike) by zero extension of the code bytes and one
 * vpermps lookup in the 16-entry unit table (it reads the low 4 bits of each
 * lane, so the low nibble needs no mask and the high one a shift).  The NF4
 * n = 1 kernel reads x in the AVX2 lookup's lane order (qk_lane_idx) and picks
 * the code bytes to match with one dword permute. */
#include "quantk_int.h"

#if FDL_HAVE_AVX2_TARGET
#define A5 FDL_TARGET_AVX512

/* the 16 codes of values [16h, 16h + 16) of half H (4-bit kinds: low nibbles of
 * even halves, high of odd) as int32 lanes whose low 4 bits are the code */
A5 static ALWAYS_INLINE __m512i codes16(const int kind, const uint8_t *p) {
    __m128i b = _mm_loadu_si128((const __m128i *)p);
    return kind == K_INT8 ? _mm512_cvtepi8_epi32(b) : _mm512_cvtepu8_epi32(b);
}

A5 static ALWAYS_INLINE __m512 unit16(const int kind, __m512i c, __m512 tab) {
    return kind == K_INT8 ? _mm512_cvtepi32_ps(c) : _mm512_permutexvar_ps(c, tab);
}

/* bytes of the 16 values at [16h, 16h + 16) of half H (K_LIN below stands for every
 * 4-bit kind: the table lookup serves NF4 and int2-4 alike) */
static ALWAYS_INLINE const uint8_t *half16(const int kind, const uint8_t *row, int64_t H, int h) {
    return qk_half_ptr(kind, row, H) + 16 * h;
}

A5 static ALWAYS_INLINE void dec_half(const int kind, const uint8_t *row, int64_t H, __m512 sv,
                                      __m512 tab, float *o) {
    for (int h = 0; h < 2; h++) {
        __m512i c = codes16(kind, half16(kind, row, H, h));
        if (kind != K_INT8 && (H & 1)) c = _mm512_srli_epi32(c, 4);
        _mm512_storeu_ps(o + 16 * h, _mm512_mul_ps(sv, unit16(kind, c, tab)));
    }
}

/* twin: fdl_qk_dec_range_scalar */
A5 void fdl_qk_dec_range_avx512(const fdl_qk_desc *q, int64_t j, int64_t r0, int64_t r1,
                                float *dst) {
    const int kind = qk_kind(q);
    const uint8_t *row = q->data + j * q->rowb;
    const __m512 tab = _mm512_loadu_ps(qk_unit_table(q));
    int64_t nH = qk_halves(q);
    int64_t H = r0 / 32, Hend = r1 / 32 < nH ? r1 / 32 : nH;
    int64_t bprev = -1;
    __m512 sv = _mm512_setzero_ps();
    qk_bcur bc = qk_bcur_init(q, 32 * H);
    for (; H < Hend; H++) {
        int64_t r = 32 * H, b = qk_bcur_at(&bc, r);
        if (r + 31 >= bc.hi) {
            fdl_qk_dec_range_scalar(q, j, r, r + 32, dst + (r - r0));
            continue;
        }
        if (b != bprev) { sv = _mm512_set1_ps(qk_scale(q, j, b)); bprev = b; }
        if (kind == K_INT8) dec_half(K_INT8, row, H, sv, tab, dst + (r - r0));
        else dec_half(K_LIN, row, H, sv, tab, dst + (r - r0));
    }
    int64_t rs = 32 * H > r0 ? 32 * H : r0;
    if (rs < r1) fdl_qk_dec_range_scalar(q, j, rs, r1, dst + (rs - r0));
}

A5 static ALWAYS_INLINE float hsum8(__m256 t) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));
    __m128 c = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(c);
}

/* the twin's A[0] + A[1] of a register holding (A[0] | A[1]) */
A5 static ALWAYS_INLINE __m256 pair_sum(__m512 a) {
    return _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
}

/* ---------------------------------------------------------------- n = 1 */

/* plain block scales are broadcast from memory (a load, not a shuffle) */
static inline const float *plain_scales(const fdl_qk_desc *q, int64_t j) {
    return (!q->dq && !q->per_tensor) ? q->scales + j * q->nb : NULL;
}

A5 static ALWAYS_INLINE __m256 block_scale(const fdl_qk_desc *q, const float *sp, int64_t j,
                                           int64_t b) {
    return sp ? _mm256_broadcast_ss(sp + b) : _mm256_set1_ps(qk_scale(q, j, b));
}

/* block end: T = fma((A0 + A1) + (A2 + A3), s, T), A = 0.  PAIRED: the registers hold
 * (A0 | A1) and (A2 | A3); else (A0 | A2) and (A1 | A3) */
A5 static ALWAYS_INLINE void flush16(const int PAIRED, __m512 *R0, __m512 *R1, __m256 *T,
                                     __m256 s) {
    __m256 c;
    if (PAIRED) {
        c = _mm256_add_ps(pair_sum(*R0), pair_sum(*R1));
    } else {
        c = pair_sum(_mm512_add_ps(*R0, *R1));
    }
    *T = _mm256_fmadd_ps(c, s, *T);
    *R0 = *R1 = _mm512_setzero_ps();
}

/* twin: fdl_qk_mv_fast_scalar (int8) */
A5 void fdl_qk_mv_i8_avx512(const fdl_qk_desc *q, const uint8_t *row, int64_t j, const float *x,
                            int64_t nHf, int64_t hpb, float *res) {
    const float *sp = plain_scales(q, j);
    const __m512 none = _mm512_setzero_ps();
    __m512 A01 = _mm512_setzero_ps(), A23 = _mm512_setzero_ps();
    __m256 T = _mm256_setzero_ps();
    int64_t cnt = 0, b = 0;
    for (int64_t H = 0; H < nHf; H++) {
        const uint8_t *p = row + 32 * H;
        A01 = _mm512_fmadd_ps(_mm512_loadu_ps(x + 32 * H), unit16(K_INT8, codes16(K_INT8, p), none),
                              A01);
        A23 = _mm512_fmadd_ps(_mm512_loadu_ps(x + 32 * H + 16),
                              unit16(K_INT8, codes16(K_INT8, p + 16), none), A23);
        if (++cnt == hpb || H + 1 == nHf) {
            flush16(1, &A01, &A23, &T, block_scale(q, sp, j, b));
            cnt = 0;
            b++;
        }
    }
    *res = hsum8(T);
}

/* 4-bit kinds: the 64 values of halves H, H + 1 (H even) from the codes c0, c1 of
 * the two registers (low nibbles; the odd half's are the high ones) */
A5 static ALWAYS_INLINE void mv4_group(const int PAIRED, const fdl_qk_desc *q, const float *sp,
                                       int64_t j, const float *x, int64_t H, __m512i c0,
                                       __m512i c1, __m512 tab, int64_t nHf, int64_t hpb,
                                       int64_t *cnt, int64_t *b, __m512 *R0, __m512 *R1,
                                       __m256 *T) {
    for (int odd = 0; odd < 2; odd++, H++) {
        *R0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + 32 * H), _mm512_permutexvar_ps(c0, tab), *R0);
        *R1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + 32 * H + 16), _mm512_permutexvar_ps(c1, tab), *R1);
        if (++*cnt == hpb || H + 1 == nHf) {
            flush16(PAIRED, R0, R1, T, block_scale(q, sp, j, *b));
            *cnt = 0;
            ++*b;
        }
        c0 = _mm512_srli_epi32(c0, 4);
        c1 = _mm512_srli_epi32(c1, 4);
    }
}

/* twin: fdl_qk_mv_fast_scalar (int2-4; lane order 8v + l, nHf is even) */
A5 void fdl_qk_mv_lin_avx512(const fdl_qk_desc *q, const uint8_t *row, int64_t j, const float *x,
                             int64_t nHf, int64_t hpb, float *res) {
    const float *sp = plain_scales(q, j);
    const __m512 tab = _mm512_loadu_ps(qk_unit_table(q));
    __m512 A01 = _mm512_setzero_ps(), A23 = _mm512_setzero_ps();
    __m256 T = _mm256_setzero_ps();
    int64_t cnt = 0, b = 0;
    for (int64_t H = 0; H < nHf; H += 2) {
        const uint8_t *p = row + 16 * H;
        mv4_group(1, q, sp, j, x, H, codes16(K_LIN, p), codes16(K_LIN, p + 16), tab, nHf, hpb,
                  &cnt, &b, &A01, &A23, &T);
    }
    *res = hsum8(T);
}

/* twin: fdl_qk_mv_fast_scalar (NF4): x in the lane order qk_lane_idx / qk_xl_pos, so
 * register (A0 | A2) holds the values of code dwords 0, 4, 2, 6 of the 32 bytes and
 * (A1 | A3) those of 1, 5, 3, 7 */
A5 void fdl_qk_mv_nf4_avx512(const fdl_qk_desc *q, const uint8_t *row, int64_t j, const float *x,
                             int64_t nHf, int64_t hpb, float *res) {
    const float *sp = plain_scales(q, j);
    const __m512 tab = _mm512_loadu_ps(qk_unit_table(q));
    const __m256i perm = _mm256_setr_epi32(0, 4, 2, 6, 1, 5, 3, 7);
    __m512 A02 = _mm512_setzero_ps(), A13 = _mm512_setzero_ps();
    __m256 T = _mm256_setzero_ps();
    int64_t cnt = 0, b = 0;
    for (int64_t H = 0; H < nHf; H += 2) {
        __m256i bb = _mm256_permutevar8x32_epi32(
            _mm256_loadu_si256((const __m256i *)(row + 16 * H)), perm);
        mv4_group(0, q, sp, j, x, H, _mm512_cvtepu8_epi32(_mm256_castsi256_si128(bb)),
                  _mm512_cvtepu8_epi32(_mm256_extracti128_si256(bb, 1)), tab, nHf, hpb, &cnt,
                  &b, &A02, &A13, &T);
    }
    *res = hsum8(T);
}

/* ---------------------------------------------------------------- n >= 2 */

/* NR rows x NC columns; A[i][c] = (A0 | A1) of the twin: lanes 0-7 take the vectors at
 * offsets 0 and 16 of each chunk, lanes 8-15 those at 8 and 24, in that order */
A5 static ALWAYS_INLINE void mvv_tile(const int NR, const int NC, const float *val, int64_t ldv,
                                      const float *x, int64_t ldx, int64_t nV, float *res) {
    __m512 A[2][4];
    for (int i = 0; i < NR; i++)
        for (int c = 0; c < NC; c++) A[i][c] = _mm512_setzero_ps();
    for (int64_t H = 0; H < nV; H++) {
        for (int h = 0; h < 2; h++) {
            __m512 xv[2], uv[4];
            for (int i = 0; i < NR; i++) xv[i] = _mm512_loadu_ps(x + i * ldx + 32 * H + 16 * h);
            for (int c = 0; c < NC; c++) uv[c] = _mm512_loadu_ps(val + c * ldv + 32 * H + 16 * h);
            for (int i = 0; i < NR; i++)
                for (int c = 0; c < NC; c++) A[i][c] = _mm512_fmadd_ps(xv[i], uv[c], A[i][c]);
        }
    }
    for (int i = 0; i < NR; i++)
        for (int c = 0; c < NC; c++) res[i * MV_COLS + c] = hsum8(pair_sum(A[i][c]));
}

/* twin: fdl_qk_mvv_scalar */
A5 void fdl_qk_mvv_avx512(const float *val, int64_t ldv, int nc, const float *x, int64_t ldx,
                          int nr, int64_t nV, float *res) {
    if (nr == 2) {
        switch (nc) {
        case 4: mvv_tile(2, 4, val, ldv, x, ldx, nV, res); break;
        case 3: mvv_tile(2, 3, val, ldv, x, ldx, nV, res); break;
        case 2: mvv_tile(2, 2, val, ldv, x, ldx, nV, res); break;
        default: mvv_tile(2, 1, val, ldv, x, ldx, nV, res);
        }
    } else {
        switch (nc) {
        case 4: mvv_tile(1, 4, val, ldv, x, ldx, nV, res); break;
        case 3: mvv_tile(1, 3, val, ldv, x, ldx, nV, res); break;
        case 2: mvv_tile(1, 2, val, ldv, x, ldx, nV, res); break;
        default: mvv_tile(1, 1, val, ldv, x, ldx, nV, res);
        }
    }
}

/* ---------------------------------------------------------------- transposed */

/* one half of JB storage rows, 16 elements per register: per element the twin's fma
 * sequence (storage rows j in order) */
A5 static ALWAYS_INLINE void mt_half(const int kind, const int JB, const uint8_t *const *rows,
                                     int64_t H, int64_t n, float *y, int64_t ldy, const float *cs,
                                     __m512 tab) {
    for (int h = 0; h < 2; h++) {
        __m512 u[4];
        for (int jj = 0; jj < JB; jj++) {
            __m512i c = codes16(kind, half16(kind, rows[jj], H, h));
            if (kind != K_INT8 && (H & 1)) c = _mm512_srli_epi32(c, 4);
            u[jj] = unit16(kind, c, tab);
        }
        for (int64_t i = 0; i < n; i++) {
            float *yp = y + i * ldy + 16 * h;
            __m512 yv = _mm512_loadu_ps(yp);
            for (int jj = 0; jj < JB; jj++)
                yv = _mm512_fmadd_ps(_mm512_set1_ps(cs[jj * n + i]), u[jj], yv);
            _mm512_storeu_ps(yp, yv);
        }
    }
}

A5 static ALWAYS_INLINE void mt_rows(const fdl_qk_desc *q, const int kind, const int JB, int64_t j,
                                     const float *x, int64_t n, float *y, int64_t ldy, int64_t yoff,
                                     int64_t a, int64_t e, float *cs) {
    const __m512 tab = _mm512_loadu_ps(qk_unit_table(q));
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
                fdl_qk_mt_range_scalar(q, rows[jj], j + jj, x, n, y, ldy, yoff, r, r + 32);
            continue;
        }
        if (b != bprev) {
            for (int jj = 0; jj < JB; jj++) {
                float s = qk_scale(q, j + jj, b);
                for (int64_t i = 0; i < n; i++) cs[jj * n + i] = x[i * d_out + j + jj] * s;
            }
            bprev = b;
        }
        mt_half(kind, JB, rows, H, n, y + (r - yoff), ldy, cs, tab);
    }
    int64_t rs = 32 * H > a ? 32 * H : a;
    if (rs < e)
        for (int jj = 0; jj < JB; jj++)
            fdl_qk_mt_range_scalar(q, rows[jj], j + jj, x, n, y, ldy, yoff, rs, e);
}

/* twin: fdl_qk_mt_rows_scalar; jb is 1 or 4 */
A5 void fdl_qk_mt_rows_avx512(const fdl_qk_desc *q, int64_t j, int jb, const float *x, int64_t n,
                              float *y, int64_t ldy, int64_t yoff, int64_t a, int64_t e, float *cs) {
    int i8 = qk_kind(q) == K_INT8;
    if (jb == 4) {
        if (i8) mt_rows(q, K_INT8, 4, j, x, n, y, ldy, yoff, a, e, cs);
        else mt_rows(q, K_LIN, 4, j, x, n, y, ldy, yoff, a, e, cs);
        return;
    }
    for (int jj = 0; jj < jb; jj++) {
        if (i8) mt_rows(q, K_INT8, 1, j + jj, x, n, y, ldy, yoff, a, e, cs);
        else mt_rows(q, K_LIN, 1, j + jj, x, n, y, ldy, yoff, a, e, cs);
    }
}

#endif
