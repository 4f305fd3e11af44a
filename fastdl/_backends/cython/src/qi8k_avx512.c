/* AVX-512 VNNI int8-activation kernels (vpdpbusd); scalar twins in qi8k.c,
 * bitwise equal: the integer sums are exact and the float part follows
 * fdl_qi8_strip_scalar's order (one FMA per 32-block, one per weight block). */
#include "qi8k_int.h"

#if FDL_HAVE_AVX2_TARGET

/* ---- the quantizer (twin: qi8_quantize_row): whole 32-blocks in two zmm, the same
 * float32 operations (max of |x|, one division, one reciprocal, product, trunc,
 * compare), so the same q and d; a short last block goes through the twin */
QI8_T512 int64_t fdl_qi8_quant_avx512(const float *x, int64_t r0, int64_t r1, int64_t d_in,
                                      int64_t kp, int8_t *qx, float *dx, int32_t *sq) {
    int64_t nb32 = kp / 32, full = d_in / 32, bad = 0;
    const __m512 fmax = _mm512_set1_ps(FLT_MAX), half = _mm512_set1_ps(0.5f);
    const __m512 one = _mm512_set1_ps(1.0f), lim = _mm512_set1_ps(127.0f);
    const __m512 nlim = _mm512_set1_ps(-127.0f), zero = _mm512_setzero_ps();
    for (int64_t r = r0; r < r1; r++) {
        const float *xr = x + r * d_in;
        int8_t *q = qx + r * kp;
        float *d = dx + r * nb32;
        int32_t *ss = sq + r * nb32;
        for (int64_t s = 0; s < full; s++) {
            __m512 v0 = _mm512_loadu_ps(xr + 32 * s), v1 = _mm512_loadu_ps(xr + 32 * s + 16);
            __m512 a0 = _mm512_abs_ps(v0), a1 = _mm512_abs_ps(v1);
            /* finite: |v| <= FLT_MAX (false for inf and nan) */
            __mmask16 ok = _mm512_cmp_ps_mask(a0, fmax, _CMP_LE_OQ) &
                           _mm512_cmp_ps_mask(a1, fmax, _CMP_LE_OQ);
            float amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
            int finite = ok == 0xFFFF;
            float ds = amax / 127.0f;
            if (!finite || amax < 0x1p-100f) ds = 0.0f;
            bad += !finite;
            __m512 id = _mm512_set1_ps(ds != 0.0f ? 1.0f / ds : 0.0f);
            __m128i qb[2];
            __m512i sum = _mm512_setzero_si512();
            for (int h = 0; h < 2; h++) {
                __m512 t = _mm512_mul_ps(h ? v1 : v0, id);
                __m512 rr = _mm512_roundscale_ps(t, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                __m512 f = _mm512_abs_ps(_mm512_sub_ps(t, rr));
                __mmask16 up = _mm512_cmp_ps_mask(f, half, _CMP_GE_OQ);
                __mmask16 neg = _mm512_cmp_ps_mask(t, zero, _CMP_LT_OQ);
                __m512 step = _mm512_mask_blend_ps(neg, one, _mm512_sub_ps(zero, one));
                rr = _mm512_mask_add_ps(rr, up, rr, step);
                rr = _mm512_min_ps(_mm512_max_ps(rr, nlim), lim);
                __m512i qi = _mm512_cvttps_epi32(rr);
                sum = _mm512_add_epi32(sum, qi);
                qb[h] = _mm512_cvtepi32_epi8(qi);
            }
            _mm_storeu_si128((__m128i *)(q + 32 * s), qb[0]);
            _mm_storeu_si128((__m128i *)(q + 32 * s + 16), qb[1]);
            d[s] = ds;
            ss[s] = _mm512_reduce_add_epi32(sum);
        }
        if (full < nb32)
            bad += qi8_quantize_row(xr + 32 * full, d_in - 32 * full, nb32 - full,
                                    q + 32 * full, d + full, ss + full);
    }
    return bad;
}

/* ---- strip path: 16 rows per zmm (x panel lanes) x 8 weight columns broadcast, one
 * x load per 8 vpdpbusd.  The 32-blocks run in chunks of QI8_SK so a chunk of the x
 * tile stays in L1 across the strip's column groups; between chunks a group's float
 * state (per-block sums fa, totals ft) waits in `st` (exact copies: same result). */
#define QI8_SK 16
static QI8_T512 ALWAYS_INLINE void mk512(const fdl_qi8_x *X, int64_t t, const fdl_qi8_w *W,
                                         int64_t c0, int64_t s0, int64_t s1, float *st) {
    const int64_t nb32 = X->nb32, kp = W->kp, spb = W->spb, nbw = W->nbw;
    enum { NC = FDL_QI8_NC };
    __m512i acc[NC];
    __m512 fa[NC];
    float *ft = st + 16 * NC;
    for (int c = 0; c < NC; c++) fa[c] = _mm512_loadu_ps(st + 16 * c);
    const int8_t *wu = W->wu + c0 * kp;
    const int32_t *wc = W->wc + c0 * nb32;
    const float *sw = W->sw + c0 * nbw;
    int64_t B = s0 / spb, left = spb - s0 % spb;   /* 32-blocks left in weight block B */
    for (int64_t s = s0; s < s1; s++) {
        /* start at -128 * sum(units): the x operand is q + 128 */
        for (int c = 0; c < NC; c++) acc[c] = _mm512_set1_epi32(wc[c * nb32 + s]);
        const uint8_t *xs = X->xp + (t * nb32 + s) * 512;
        const int8_t *ws = wu + 32 * s;
        for (int kg = 0; kg < 8; kg++) {
            __m512i xv = _mm512_loadu_si512(xs + 64 * kg);
            for (int c = 0; c < NC; c++) {
                int32_t wv;
                memcpy(&wv, ws + c * kp + 4 * kg, 4);
                acc[c] = _mm512_dpbusd_epi32(acc[c], xv, _mm512_set1_epi32(wv));
            }
        }
        __m512 dxv = _mm512_loadu_ps(X->dxp + (t * nb32 + s) * 16);
        for (int c = 0; c < NC; c++)
            fa[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[c]), dxv, fa[c]);
        if (--left == 0 || s + 1 == nb32) {
            left = spb;
            for (int c = 0; c < NC; c++) {
                __m512 f = _mm512_loadu_ps(ft + 16 * c);
                f = _mm512_fmadd_ps(fa[c], _mm512_set1_ps(sw[c * nbw + B]), f);
                _mm512_storeu_ps(ft + 16 * c, f);
                fa[c] = _mm512_setzero_ps();
            }
            B++;
        }
    }
    for (int c = 0; c < NC; c++) _mm512_storeu_ps(st + 16 * c, fa[c]);
}

QI8_T512 void fdl_qi8_strip_avx512(const fdl_qi8_x *X, const fdl_qi8_w *W, float *y, int64_t ldy,
                                   float *tbuf) {
    const int64_t ng = W->jwp / FDL_QI8_NC, nb32 = X->nb32;
    for (int64_t t = 0; t < X->ntile; t++) {
        memset(tbuf, 0, (size_t)ng * 32 * FDL_QI8_NC * sizeof(float));
        for (int64_t s0 = 0; s0 < nb32; s0 += QI8_SK) {
            int64_t s1 = s0 + QI8_SK < nb32 ? s0 + QI8_SK : nb32;
            for (int64_t g = 0; g < ng; g++)
                mk512(X, t, W, g * FDL_QI8_NC, s0, s1, tbuf + g * 32 * FDL_QI8_NC);
        }
        for (int64_t g = 0; g < ng; g++) {
            const float *ft = tbuf + g * 32 * FDL_QI8_NC + 16 * FDL_QI8_NC;
            for (int c = 0; c < FDL_QI8_NC && g * FDL_QI8_NC + c < W->jw; c++)
                for (int64_t rr = 0; rr < 16 && 16 * t + rr < X->n; rr++)
                    y[(16 * t + rr) * ldy + W->j0 + g * FDL_QI8_NC + c] = ft[c * 16 + rr];
        }
    }
}

/* ---- small n, straight from the storage rows: 8 columns x 64 values per step;
 * one zmm per column holds the dpbusd partial sums of two 32-blocks (low / high
 * 256 bits), reduced across the 8 columns to [block A: c0..c7 | block B: c0..c7] */
static QI8_T512 ALWAYS_INLINE __m512i hadd512(__m512i a, __m512i b) {
    __m512 fa = _mm512_castsi512_ps(a), fb = _mm512_castsi512_ps(b);
    __m512i e = _mm512_castps_si512(_mm512_shuffle_ps(fa, fb, _MM_SHUFFLE(2, 0, 2, 0)));
    __m512i o = _mm512_castps_si512(_mm512_shuffle_ps(fa, fb, _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_epi32(e, o);
}

static QI8_T512 ALWAYS_INLINE __m512i reduce8(const __m512i *v) {
    __m512i a = hadd512(hadd512(v[0], v[1]), hadd512(v[2], v[3]));
    __m512i b = hadd512(hadd512(v[4], v[5]), hadd512(v[6], v[7]));
    __m512i p = _mm512_shuffle_i32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    __m512i q = _mm512_shuffle_i32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1));
    __m512i sum = _mm512_add_epi32(p, q);
    return _mm512_shuffle_i32x4(sum, sum, _MM_SHUFFLE(3, 1, 2, 0));
}

static QI8_T512 ALWAYS_INLINE void gemv_group(const fdl_qk_desc *q, const fdl_qi8_x *X, float *y,
                                              int64_t jg, int nc, int32_t *isb, float *swb,
                                              int8_t *tail, const int nib, const int full) {
    const int64_t n = X->n, nb32 = X->nb32, kp = X->kp, G = q->d_in / 64;
    const int64_t nbw = q->per_tensor ? 1 : q->nb, spb = fdl_qi8_spb(q, nb32);
    const int off = nib ? 1 << (q->bits - 1) : 128;
    /* a full group addresses its rows from one base (8 live pointers would spill) */
    const uint8_t *base = q->data + jg * q->rowb;
    const int64_t rowb = q->rowb;
    const uint8_t *rows[FDL_QI8_GV];
    for (int c = 0; c < FDL_QI8_GV; c++) rows[c] = base + (c < nc ? c : 0) * rowb;
    /* the group's weight scales, column by column (each column's are contiguous) */
    for (int c = 0; c < FDL_QI8_GV; c++) {
        if (c >= nc) {
            for (int64_t b = 0; b < nbw; b++) swb[b * 8 + c] = 0.0f;
        } else if (!q->dq) {
            const float *sc = q->per_tensor ? q->scales : q->scales + (jg + c) * q->nb;
            for (int64_t b = 0; b < nbw; b++) swb[b * 8 + c] = sc[b];
        } else {
            for (int64_t b = 0; b < nbw; b++) swb[b * 8 + c] = qk_scale(q, jg + c, b);
        }
    }
    const __m512i m0f = _mm512_set1_epi8(0x0f), m80 = _mm512_set1_epi8((char)0x80);
    const __m512i shifts = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    for (int64_t g = 0; g < G; g++) {
        __m512i w[FDL_QI8_GV];
        for (int c = 0; c < FDL_QI8_GV; c++) {
            const uint8_t *rc = full ? base + c * rowb : rows[c];
            if (nib) {
                __m512i b = _mm512_broadcast_i64x4(_mm256_loadu_si256((const void *)(rc + 32 * g)));
                w[c] = _mm512_and_si512(_mm512_srlv_epi16(b, shifts), m0f);
            } else {
                w[c] = _mm512_xor_si512(_mm512_loadu_si512(rc + 64 * g), m80);
            }
        }
        for (int64_t r = 0; r < n; r++) {
            __m512i xv = _mm512_loadu_si512(X->qx + r * kp + 64 * g), v[FDL_QI8_GV];
            for (int c = 0; c < FDL_QI8_GV; c++)
                v[c] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[c], xv);
            const int32_t *sq = X->sq + r * nb32 + 2 * g;
            __m512i corr = _mm512_mask_set1_epi32(_mm512_set1_epi32(off * sq[0]), 0xFF00,
                                                  off * sq[1]);
            _mm512_storeu_si512(isb + (r * nb32 + 2 * g) * 8, _mm512_sub_epi32(reduce8(v), corr));
        }
    }
    /* the 32-blocks past the whole 64-groups: exact integer sums, scalar */
    if (2 * G < nb32) {
        int64_t tl = kp - 64 * G;
        for (int c = 0; c < FDL_QI8_GV; c++)
            fdl_qi8_unpack_range(q, jg + (c < nc ? c : 0), 64 * G, kp, tail + c * 64);
        for (int64_t r = 0; r < n; r++)
            for (int64_t s = 2 * G; s < nb32; s++)
                for (int c = 0; c < FDL_QI8_GV; c++) {
                    int32_t t = 0;
                    const int8_t *u = tail + c * 64 + 32 * s - 64 * G;
                    const int8_t *xq = X->qx + r * kp + 32 * s;
                    for (int i = 0; i < 32; i++) t += (int32_t)xq[i] * u[i];
                    isb[(r * nb32 + s) * 8 + c] = t;
                }
        (void)tl;
    }
    for (int64_t r = 0; r < n; r++) {
        __m256 acc = _mm256_setzero_ps(), tot = _mm256_setzero_ps();
        int64_t left = spb, B = 0;
        for (int64_t s = 0; s < nb32; s++) {
            __m256 f = _mm256_cvtepi32_ps(_mm256_loadu_si256((const void *)(isb + (r * nb32 + s) * 8)));
            acc = _mm256_fmadd_ps(f, _mm256_set1_ps(X->dx[r * nb32 + s]), acc);
            if (--left == 0 || s + 1 == nb32) {
                tot = _mm256_fmadd_ps(acc, _mm256_loadu_ps(swb + (B++) * 8), tot);
                acc = _mm256_setzero_ps();
                left = spb;
            }
        }
        _mm256_mask_storeu_ps(y + r * q->d_out + jg, (__mmask8)((1u << nc) - 1), tot);
    }
}

/* ---- small n from the reordered weights (fdl_qi8_t): lanes are 16 columns, so the
 * 32-block sums need no reduction across lanes; the unpacked operands of a block serve
 * NR rows (twin: fdl_qi8_gemv_scalar, the same integers and float order) */
static QI8_T512 ALWAYS_INLINE void tile_rows(const fdl_qi8_t *T, const fdl_qi8_x *X, float *y,
                                             int64_t t, int64_t r0, const int NR, const int WIDE) {
    const int64_t nb32 = X->nb32, kp = X->kp, spb = T->spb, bps = WIDE ? 512 : 256;
    const uint8_t *w = T->wt + t * nb32 * bps;
    const float *sc = T->st + t * T->nbw * 16;
    const __m512i m0f = _mm512_set1_epi8(0x0f);
    __m512 fa[4], tot[4];
    for (int r = 0; r < NR; r++) fa[r] = tot[r] = _mm512_setzero_ps();
    int64_t left = spb, B = 0;
    for (int64_t s = 0; s < nb32; s++) {
        const uint8_t *ws = w + s * bps;
        __m512i op[8];
        /* the codes 8 blocks on: each tile's codes are one stream */
        for (int p = 0; p < (WIDE ? 8 : 4); p++)
            _mm_prefetch((const char *)(ws + 8 * bps + 64 * p), _MM_HINT_T0);
        if (WIDE) {
            for (int i = 0; i < 8; i++) op[i] = _mm512_loadu_si512(ws + 64 * i);
        } else {
            for (int p = 0; p < 4; p++) {
                __m512i v = _mm512_loadu_si512(ws + 64 * p);
                op[2 * p] = _mm512_and_si512(v, m0f);
                op[2 * p + 1] = _mm512_and_si512(_mm512_srli_epi32(v, 4), m0f);
            }
        }
        for (int r = 0; r < NR; r++) {
            const int64_t row = r0 + r;
            const int8_t *xq = X->qx + row * kp + 32 * s;
            __m512i acc = _mm512_set1_epi32(-T->off * X->sq[row * nb32 + s]);
            for (int i = 0; i < 8; i++) {
                int32_t xv;
                memcpy(&xv, xq + 4 * i, 4);
                acc = _mm512_dpbusd_epi32(acc, op[i], _mm512_set1_epi32(xv));
            }
            fa[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(X->dx[row * nb32 + s]),
                                    fa[r]);
        }
        if (--left == 0 || s + 1 == nb32) {
            __m512 sv = _mm512_loadu_ps(sc + 16 * B);
            for (int r = 0; r < NR; r++) {
                tot[r] = _mm512_fmadd_ps(fa[r], sv, tot[r]);
                fa[r] = _mm512_setzero_ps();
            }
            B++;
            left = spb;
        }
    }
    int64_t nl = T->d_out - 16 * t;
    __mmask16 m = nl >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nl) - 1);
    for (int r = 0; r < NR; r++) _mm512_mask_storeu_ps(y + (r0 + r) * T->d_out + 16 * t, m, tot[r]);
}

QI8_T512 void fdl_qi8_tiles_avx512(const fdl_qi8_t *T, const fdl_qi8_x *X, float *y, int64_t t0,
                                   int64_t t1) {
    for (int64_t t = t0; t < t1; t++)
        for (int64_t r0 = 0; r0 < X->n; r0 += 4) {
            int64_t nr = X->n - r0 < 4 ? X->n - r0 : 4;
            if (T->wide) {
                switch (nr) {
                case 1: tile_rows(T, X, y, t, r0, 1, 1); break;
                case 2: tile_rows(T, X, y, t, r0, 2, 1); break;
                case 3: tile_rows(T, X, y, t, r0, 3, 1); break;
                default: tile_rows(T, X, y, t, r0, 4, 1); break;
                }
            } else {
                switch (nr) {
                case 1: tile_rows(T, X, y, t, r0, 1, 0); break;
                case 2: tile_rows(T, X, y, t, r0, 2, 0); break;
                case 3: tile_rows(T, X, y, t, r0, 3, 0); break;
                default: tile_rows(T, X, y, t, r0, 4, 0); break;
                }
            }
        }
}

QI8_T512 void fdl_qi8_gemv_avx512(const fdl_qk_desc *q, const fdl_qi8_x *X, float *y, int64_t j0,
                                  int64_t j1, void *scratch) {
    int32_t *isb = (int32_t *)scratch;
    float *swb = (float *)(isb + X->n * X->nb32 * FDL_QI8_GV);
    int64_t nbw = q->per_tensor ? 1 : q->nb;
    int8_t *tail = (int8_t *)(swb + nbw * FDL_QI8_GV);
    for (int64_t jg = j0; jg < j1; jg += FDL_QI8_GV) {
        int nc = j1 - jg < FDL_QI8_GV ? (int)(j1 - jg) : FDL_QI8_GV;
        int full = nc == FDL_QI8_GV;
        if (q->bits <= 4 && full) gemv_group(q, X, y, jg, nc, isb, swb, tail, 1, 1);
        else if (q->bits <= 4) gemv_group(q, X, y, jg, nc, isb, swb, tail, 1, 0);
        else if (full) gemv_group(q, X, y, jg, nc, isb, swb, tail, 0, 1);
        else gemv_group(q, X, y, jg, nc, isb, swb, tail, 0, 0);
    }
}
#endif
