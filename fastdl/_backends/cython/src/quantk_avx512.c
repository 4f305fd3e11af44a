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
 * the code bytes to match with one dword permute.
 *
 * No function call inside a hot AVX-512 loop: with one, GCC moves the loop's
 * registers to zmm16-31, which vzeroupper does not clear, and the non-VEX scalar
 * code that calls these kernels column by column then runs about 2x slower
 * (measured: the n = 1 kernels fell back to the AVX2 speed). */
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

/* 64 values of a whole 64-group (32 bytes: low nibbles, then high) from st, the 16
 * products s * unit[c] of the block: a lookup of the twin's product, no multiply */
A5 static ALWAYS_INLINE void dec64_nib(const uint8_t *p, __m512 st, float *o) {
    __m512i c0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
    __m512i c1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 16)));
    _mm512_storeu_ps(o, _mm512_permutexvar_ps(c0, st));
    _mm512_storeu_ps(o + 16, _mm512_permutexvar_ps(c1, st));
    _mm512_storeu_ps(o + 32, _mm512_permutexvar_ps(_mm512_srli_epi32(c0, 4), st));
    _mm512_storeu_ps(o + 48, _mm512_permutexvar_ps(_mm512_srli_epi32(c1, 4), st));
}

/* 64 int8 values: s * (float)q */
A5 static ALWAYS_INLINE void dec64_i8(const uint8_t *p, __m512 sv, float *o) {
    for (int v = 0; v < 4; v++)
        _mm512_storeu_ps(o + 16 * v, _mm512_mul_ps(sv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
            _mm_loadu_si128((const __m128i *)(p + 16 * v))))));
}

/* twin: fdl_qk_dec_range_scalar, for blocks of whole 64-groups (or per tensor): one scale
 * (4-bit kinds: one 16-entry product table) per block, 64 values per step, the rest
 * (the partial last group) by the twin */
A5 static void dec_range_g64(const fdl_qk_desc *q, int64_t j, int64_t r0, int64_t r1,
                             float *dst) {
    const int i8 = q->bits > 4;
    const uint8_t *row = q->data + j * q->rowb;
    const __m512 tab = _mm512_loadu_ps(qk_unit_table(q));
    int64_t G = q->d_in >> 6, g = r0 >> 6;
    int64_t gend = (r1 >> 6) < G ? (r1 >> 6) : G;
    int64_t gpb = q->per_tensor ? gend + 1 : q->bs >> 6;
    float *o = dst - r0;
    while (g < gend) {
        int64_t b = q->per_tensor ? 0 : g / gpb;
        int64_t ge = q->per_tensor || (b + 1) * gpb > gend ? gend : (b + 1) * gpb;
        __m512 sv = _mm512_set1_ps(qk_scale(q, j, b));
        if (i8) {
            for (; g < ge; g++) dec64_i8(row + 64 * g, sv, o + 64 * g);
        } else {
            __m512 st = _mm512_mul_ps(sv, tab);
            for (; g < ge; g++) dec64_nib(row + 32 * g, st, o + 64 * g);
        }
    }
    if (64 * g < r1) fdl_qk_dec_range_scalar(q, j, 64 * g, r1, dst + (64 * g - r0));
}

/* twin: fdl_qk_dec_range_scalar */
A5 void fdl_qk_dec_range_avx512(const fdl_qk_desc *q, int64_t j, int64_t r0, int64_t r1,
                                float *dst) {
    if (q->per_tensor || q->bs % 64 == 0) {
        dec_range_g64(q, j, r0, r1, dst);
        return;
    }
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

/* Block scales, broadcast from memory (a load, not a shuffle): plain ones in place;
 * double-quantized ones rebuilt SEG at a time, 16 lanes per instruction, with
 * qk_scale's float32 operations (code * group scale + mean, then the clamp: max(t, +0)
 * returns its second operand for NaN and zeros, as qk_scale's `t > 0` test does). */
#define SEG 256

A5 static ALWAYS_INLINE void dq_scales(const fdl_qk_desc *q, int64_t j, int64_t b0, int64_t n,
                                  float *out) {
    const __m512 mean = _mm512_set1_ps(q->sc_mean), zero = _mm512_setzero_ps();
    const __m512 big = _mm512_set1_ps(FLT_MAX);
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int64_t k = 0; k < n; k += 16) {
        int64_t u = j * q->nb + b0 + k, m = n - k < 16 ? n - k : 16;
        __mmask16 mk = (__mmask16)(m == 16 ? 0xffffu : (1u << m) - 1u);
        __m512 code = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
            _mm_maskz_loadu_epi8(mk, q->sc_codes + u)));
        /* each lane's group scale: one of two neighbouring groups of 256 */
        __mmask16 next = _mm512_mask_cmpge_epi32_mask(
            mk, _mm512_add_epi32(_mm512_set1_epi32((int)(u & 255)), iota), _mm512_set1_epi32(256));
        __m512 gs = _mm512_set1_ps(q->sc_scales[u >> 8]);
        if (next) gs = _mm512_mask_blend_ps(next, gs, _mm512_set1_ps(q->sc_scales[(u >> 8) + 1]));
        __m512 t = _mm512_add_ps(_mm512_mul_ps(code, gs), mean);
        _mm512_mask_storeu_ps(out + k, mk, _mm512_min_ps(_mm512_max_ps(t, zero), big));
    }
}

/* block end: T = fma((A0 + A1) + (A2 + A3), s, T), A = 0.  PAIRED: the registers hold
 * (A0 | A1) and (A2 | A3); else (A0 | A2) and (A1 | A3) */
A5 static ALWAYS_INLINE void flush16(const int PAIRED, __m512 *R0, __m512 *R1, __m256 *T,
                                     const float *s) {
    __m256 c;
    if (PAIRED) c = _mm256_add_ps(pair_sum(*R0), pair_sum(*R1));
    else c = pair_sum(_mm512_add_ps(*R0, *R1));
    *T = _mm256_fmadd_ps(c, _mm256_broadcast_ss(s), *T);
    *R0 = *R1 = _mm512_setzero_ps();
}

/* the codes of the 64 values of halves H, H + 1 (4-bit kinds, H even) in two registers
 * of low nibbles (the odd half's are the high ones); NF4 in the register order
 * (A0 | A2), (A1 | A3): code dwords 0, 4, 2, 6 and 1, 5, 3, 7 of the 32 bytes */
A5 static ALWAYS_INLINE void codes64(const int kind, const uint8_t *p, __m512i *c0, __m512i *c1) {
    if (kind == K_NF4) {
        __m256i bb = _mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *)p),
                                                 _mm256_setr_epi32(0, 4, 2, 6, 1, 5, 3, 7));
        *c0 = _mm512_cvtepu8_epi32(_mm256_castsi256_si128(bb));
        *c1 = _mm512_cvtepu8_epi32(_mm256_extracti128_si256(bb, 1));
    } else {
        *c0 = codes16(K_LIN, p);
        *c1 = codes16(K_LIN, p + 16);
    }
}

/* twin: fdl_qk_mv_fast_scalar.  Int8 and int2-4 (lane order 8v + l) hold (A0 | A1) and
 * (A2 | A3); NF4 (x in the order qk_lane_idx / qk_xl_pos) holds (A0 | A2), (A1 | A3).
 * The halves go by segments of SEG blocks, whose scales are ready before (a segment
 * starts at an even half: SEG is even). */
A5 static ALWAYS_INLINE void mv_fast16(const int kind, const int DQ, const fdl_qk_desc *q,
                                       const uint8_t *row, int64_t j, const float *x, int64_t nHf,
                                       int64_t hpb, float *res) {
    const int PAIRED = kind != K_NF4;
    const __m512 tab = _mm512_loadu_ps(qk_unit_table(q));
    float buf[DQ ? SEG : 1];
    __m512 R0 = _mm512_setzero_ps(), R1 = _mm512_setzero_ps();
    __m256 T = _mm256_setzero_ps();
    int64_t nblk = q->per_tensor ? 1 : (nHf + hpb - 1) / hpb;
    int64_t cnt = 0, b = 0;
    for (int64_t b0 = 0; b0 < nblk; b0 += SEG) {
        int64_t n = nblk - b0 < SEG ? nblk - b0 : SEG;
        const float *sp = DQ ? buf : q->per_tensor ? q->scales : q->scales + j * q->nb + b0;
        if (DQ) dq_scales(q, j, b0, n, buf);
        sp -= q->per_tensor ? 0 : b0;
        int64_t H = q->per_tensor ? 0 : b0 * hpb;
        int64_t H1 = q->per_tensor || (b0 + n) * hpb > nHf ? nHf : (b0 + n) * hpb;
        if (kind == K_INT8) {
            for (; H < H1; H++) {
                const uint8_t *p = row + 32 * H;
                R0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + 32 * H),
                                     _mm512_cvtepi32_ps(codes16(K_INT8, p)), R0);
                R1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + 32 * H + 16),
                                     _mm512_cvtepi32_ps(codes16(K_INT8, p + 16)), R1);
                if (++cnt == hpb || H + 1 == nHf) {
                    flush16(PAIRED, &R0, &R1, &T, sp + (q->per_tensor ? 0 : b));
                    cnt = 0;
                    b++;
                }
            }
            continue;
        }
        for (; H < H1; H += 2) {
            __m512i c0, c1;
            codes64(kind, row + 16 * H, &c0, &c1);
            for (int odd = 0; odd < 2; odd++) {
                int64_t h = H + odd;
                R0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + 32 * h), _mm512_permutexvar_ps(c0, tab), R0);
                R1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + 32 * h + 16), _mm512_permutexvar_ps(c1, tab),
                                     R1);
                if (++cnt == hpb || h + 1 == nHf) {
                    flush16(PAIRED, &R0, &R1, &T, sp + (q->per_tensor ? 0 : b));
                    cnt = 0;
                    b++;
                }
                c0 = _mm512_srli_epi32(c0, 4);
                c1 = _mm512_srli_epi32(c1, 4);
            }
        }
    }
    *res = hsum8(T);
}

A5 static NOINLINE void mv_i8_dq(const fdl_qk_desc *q, const uint8_t *row, int64_t j,
                                  const float *x, int64_t nHf, int64_t hpb, float *res) {
    mv_fast16(K_INT8, 1, q, row, j, x, nHf, hpb, res);
}

A5 void fdl_qk_mv_i8_avx512(const fdl_qk_desc *q, const uint8_t *row, int64_t j, const float *x,
                            int64_t nHf, int64_t hpb, float *res) {
    /* apart: the plain loop stays free of the scale rebuilding */
    if (q->dq) mv_i8_dq(q, row, j, x, nHf, hpb, res);
    else mv_fast16(K_INT8, 0, q, row, j, x, nHf, hpb, res);
}

A5 static NOINLINE void mv_lin_dq(const fdl_qk_desc *q, const uint8_t *row, int64_t j,
                                  const float *x, int64_t nHf, int64_t hpb, float *res) {
    mv_fast16(K_LIN, 1, q, row, j, x, nHf, hpb, res);
}

A5 void fdl_qk_mv_lin_avx512(const fdl_qk_desc *q, const uint8_t *row, int64_t j, const float *x,
                             int64_t nHf, int64_t hpb, float *res) {
    /* apart: the plain loop stays free of the scale rebuilding */
    if (q->dq) mv_lin_dq(q, row, j, x, nHf, hpb, res);
    else mv_fast16(K_LIN, 0, q, row, j, x, nHf, hpb, res);
}

A5 static NOINLINE void mv_nf4_dq(const fdl_qk_desc *q, const uint8_t *row, int64_t j,
                                  const float *x, int64_t nHf, int64_t hpb, float *res) {
    mv_fast16(K_NF4, 1, q, row, j, x, nHf, hpb, res);
}

A5 void fdl_qk_mv_nf4_avx512(const fdl_qk_desc *q, const uint8_t *row, int64_t j, const float *x,
                             int64_t nHf, int64_t hpb, float *res) {
    /* apart: the plain loop stays free of the scale rebuilding */
    if (q->dq) mv_nf4_dq(q, row, j, x, nHf, hpb, res);
    else mv_fast16(K_NF4, 0, q, row, j, x, nHf, hpb, res);
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
        mt_half(kind, JB, rows, H, n, y + (r - yoff), ldy, cs, tab);
    }
    qk_mt_tail(q, rows, JB, j, x, n, y, ldy, yoff, H, a, e);
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
