/* Int8-activation matmul: the scalar twins, the quantizer, the x panel, the weight
 * strip unpacking and the tier tables (contracts in qi8k.h). */
#include "qi8k_int.h"

int64_t fdl_qi8_quant_scalar(const float *x, int64_t r0, int64_t r1, int64_t d_in, int64_t kp,
                             int8_t *qx, float *dx, int32_t *sq) {
    int64_t nb32 = kp / 32, bad = 0;
    for (int64_t r = r0; r < r1; r++)
        bad += qi8_quantize_row(x + r * d_in, d_in, nb32, qx + r * kp, dx + r * nb32,
                                sq + r * nb32);
    return bad;
}

#if FDL_HAVE_AVX2_TARGET
FDL_TARGET_AVX2 int64_t fdl_qi8_quant_avx2(const float *x, int64_t r0, int64_t r1, int64_t d_in,
                                           int64_t kp, int8_t *qx, float *dx, int32_t *sq) {
    int64_t nb32 = kp / 32, bad = 0;
    for (int64_t r = r0; r < r1; r++)
        bad += qi8_quantize_row(x + r * d_in, d_in, nb32, qx + r * kp, dx + r * nb32,
                                sq + r * nb32);
    return bad;
}

#endif

void fdl_qi8_xpanel_tile(const fdl_qi8_x *X, int64_t t, uint8_t *xp, float *dxp) {
    for (int64_t s = 0; s < X->nb32; s++) {
        uint8_t *o = xp + (t * X->nb32 + s) * 512;
        float *od = dxp + (t * X->nb32 + s) * 16;
        for (int rr = 0; rr < FDL_QI8_TILE; rr++) {
            int64_t r = t * FDL_QI8_TILE + rr;
            const int8_t *qr = r < X->n ? X->qx + r * X->kp + 32 * s : NULL;
            for (int kg = 0; kg < 8; kg++)
                for (int k = 0; k < 4; k++)
                    o[64 * kg + 4 * rr + k] = (uint8_t)((qr ? qr[4 * kg + k] : 0) + 128);
            od[rr] = qr ? X->dx[r * X->nb32 + s] : 0.0f;
        }
    }
}

void fdl_qi8_amx_pack_x(const fdl_qi8_x *X, int64_t rt, int8_t *xk, float *dk) {
    for (int64_t s = 0; s < X->nb32; s++)
        for (int r = 0; r < 16; r++) {
            int64_t row = 16 * rt + r;
            int8_t *o = xk + ((rt * X->nb32 + s) * 16 + r) * 32;
            if (row < X->n) {
                memcpy(o, X->qx + row * X->kp + 32 * s, 32);
                dk[(rt * X->nb32 + s) * 16 + r] = X->dx[row * X->nb32 + s];
            } else {
                memset(o, 0, 32);
                dk[(rt * X->nb32 + s) * 16 + r] = 0.0f;
            }
        }
}

int64_t fdl_qi8_spb(const fdl_qk_desc *q, int64_t nb32) {
    return q->per_tensor || q->nb == 1 ? nb32 : q->bs / 32;
}

void fdl_qi8_unpack_range(const fdl_qk_desc *q, int64_t j, int64_t r0, int64_t kp, int8_t *dst) {
    const uint8_t *row = q->data + j * q->rowb;
    int64_t d_in = q->d_in, r = r0;
    if (q->bits > 4) {
        memcpy(dst, row + r0, (size_t)(d_in - r0));
        r = d_in;
    } else {
        int off = 1 << (q->bits - 1);
        int64_t G = d_in / 64;
        for (int64_t g = r0 / 64; g < G; g++) {
            const uint8_t *b = row + 32 * g;
            int8_t *o = dst + 64 * g - r0;
            for (int i = 0; i < 32; i++) {
                o[i] = (int8_t)((b[i] & 15) - off);
                o[i + 32] = (int8_t)((b[i] >> 4) - off);
            }
        }
        r = 64 * G > r0 ? 64 * G : r0;
        int64_t rem = d_in - 64 * G, h = (rem + 1) / 2;
        const uint8_t *b = row + 32 * G;
        for (int64_t i = r - 64 * G; i < rem; i++)
            dst[64 * G + i - r0] = (int8_t)((i < h ? (b[i] & 15) : (b[i - h] >> 4)) - off);
        r = d_in;
    }
    memset(dst + (r - r0), 0, (size_t)(kp - r));
}

void fdl_qi8_unpack_strip(const fdl_qk_desc *q, fdl_qi8_w *W) {
    int64_t kp = W->kp, nb32 = W->nb32;
    for (int64_t c = 0; c < W->jwp; c++) {
        int8_t *u = W->wu + c * kp;
        if (c < W->jw) {
            fdl_qi8_unpack_range(q, W->j0 + c, 0, kp, u);
            for (int64_t b = 0; b < W->nbw; b++) W->sw[c * W->nbw + b] = qk_scale(q, W->j0 + c, b);
        } else {
            memset(u, 0, (size_t)kp);
            for (int64_t b = 0; b < W->nbw; b++) W->sw[c * W->nbw + b] = 0.0f;
        }
        for (int64_t s = 0; s < nb32; s++) {
            int32_t t = 0;
            for (int i = 0; i < 32; i++) t += u[32 * s + i];     /* the 32-blocks of x */
            W->wc[c * nb32 + s] = -128 * t;
        }
    }
}

int64_t fdl_qi8_gemv_scratch(int64_t n, int64_t kp, int64_t nb32, int64_t nbw) {
    int64_t scalar = kp + 4 * nb32 + 4 * nbw + 64;
    int64_t simd = 4 * (n * nb32 * FDL_QI8_GV + nbw * FDL_QI8_GV) + FDL_QI8_GV * 64 + 64;
    return scalar > simd ? scalar : simd;
}

void fdl_qi8_tiles_init(const fdl_qk_desc *q, const uint8_t *wt, const float *st, fdl_qi8_t *T) {
    T->d_out = q->d_out;
    T->NT = (q->d_out + 15) / 16;
    T->nb32 = (q->d_in + 31) / 32;
    T->nbw = q->per_tensor ? 1 : q->nb;
    T->spb = fdl_qi8_spb(q, T->nb32);
    T->wide = q->bits > 4;
    T->off = T->wide ? 128 : 1 << (q->bits - 1);
    T->wt = wt;
    T->st = st;
}

void fdl_qi8_pack_tile(const fdl_qk_desc *q, int64_t t, uint8_t *wt, float *st, int8_t *tmp) {
    fdl_qi8_t T;
    fdl_qi8_tiles_init(q, wt, st, &T);
    const int wide = T.wide, off = T.off;
    const int64_t nb32 = T.nb32, kp = 32 * nb32, bps = wide ? 512 : 256, nbw = T.nbw;
    uint8_t *w = wt + t * nb32 * bps;
    float *sc = st + t * nbw * 16;
    for (int l = 0; l < 16; l++) {
        int64_t j = 16 * t + l;
        if (j < q->d_out) {
            fdl_qi8_unpack_range(q, j, 0, kp, tmp);
            for (int64_t b = 0; b < nbw; b++) sc[16 * b + l] = qk_scale(q, j, b);
        } else {
            memset(tmp, 0, (size_t)kp);
            for (int64_t b = 0; b < nbw; b++) sc[16 * b + l] = 0.0f;
        }
        for (int64_t s = 0; s < nb32; s++) {
            const int8_t *u = tmp + 32 * s;
            for (int i = 0; i < 8; i++)
                for (int b = 0; b < 4; b++) {
                    unsigned c = (unsigned)(u[4 * i + b] + off);
                    if (wide)
                        w[s * 512 + 64 * i + 4 * l + b] = (uint8_t)c;
                    else if (i & 1)
                        w[s * 256 + 64 * (i >> 1) + 4 * l + b] |= (uint8_t)(c << 4);
                    else
                        w[s * 256 + 64 * (i >> 1) + 4 * l + b] = (uint8_t)c;
                }
        }
    }
}

/* scalar twin of the strip path: isum by the definition, then the one float order */
void fdl_qi8_strip_scalar(const fdl_qi8_x *X, const fdl_qi8_w *W, float *y, int64_t ldy,
                          float *tbuf) {
    (void)tbuf;
    int64_t kp = W->kp, nb32 = W->nb32;
    for (int64_t r = 0; r < X->n; r++) {
        const int8_t *qr = X->qx + r * X->kp;
        for (int64_t c = 0; c < W->jw; c++) {
            const int8_t *u = W->wu + c * kp;
            float tot = 0.0f, acc = 0.0f;
            for (int64_t s = 0; s < nb32; s++) {
                int32_t t = 0;
                for (int i = 0; i < 32; i++) t += (int32_t)qr[32 * s + i] * u[32 * s + i];
                acc = fmaf((float)t, X->dx[r * nb32 + s], acc);
                if (qi8_block_end(s, W->spb, nb32)) {
                    tot = fmaf(acc, W->sw[c * W->nbw + s / W->spb], tot);
                    acc = 0.0f;
                }
            }
            y[r * ldy + W->j0 + c] = tot;
        }
    }
}

/* scalar twin of the small-n path: one column at a time through the strip twin */
void fdl_qi8_gemv_scalar(const fdl_qk_desc *q, const fdl_qi8_x *X, float *y, int64_t j0,
                         int64_t j1, void *scratch) {
    fdl_qi8_w W;
    W.kp = X->kp;
    W.nb32 = X->nb32;
    W.nbw = q->per_tensor ? 1 : q->nb;
    W.spb = fdl_qi8_spb(q, X->nb32);
    W.wu = (int8_t *)scratch;
    W.wc = (int32_t *)((char *)scratch + ((X->kp + 63) & ~(int64_t)63));
    W.sw = (float *)(W.wc + X->nb32);
    W.jw = W.jwp = 1;
    W.wide = q->bits > 4;
    for (int64_t j = j0; j < j1; j++) {
        W.j0 = j;
        fdl_qi8_unpack_strip(q, &W);
        fdl_qi8_strip_scalar(X, &W, y, q->d_out, NULL);
    }
}

static const fdl_qi8_kernels K_SCALAR = {"scalar", fdl_qi8_quant_scalar, fdl_qi8_gemv_scalar,
                                         fdl_qi8_strip_scalar, NULL, NULL};
#if FDL_HAVE_AVX2_TARGET
static const fdl_qi8_kernels K_AVX2 = {"avx2", fdl_qi8_quant_avx2, NULL, fdl_qi8_strip_avx2,
                                       NULL, NULL};
static const fdl_qi8_kernels K_AVXVNNI = {"avxvnni", fdl_qi8_quant_avx2, NULL,
                                          fdl_qi8_strip_avxvnni, NULL, NULL};
static const fdl_qi8_kernels K_AVX512 = {"avx512vnni", fdl_qi8_quant_avx512, fdl_qi8_gemv_avx512,
                                         fdl_qi8_strip_avx512, fdl_qi8_tiles_avx512, NULL};
#if FDL_QI8_HAVE_AMX
/* AMX: the AVX-512 kernels, and tile products from 16 rows up where the weights come
 * reordered */
static const fdl_qi8_kernels K_AMX = {"amx", fdl_qi8_quant_avx512, fdl_qi8_gemv_avx512,
                                      fdl_qi8_strip_avx512, fdl_qi8_tiles_avx512, fdl_qi8_amx};
#endif
#endif

int fdl_qi8_best_tier(int simd_level) {
#if FDL_HAVE_AVX2_TARGET
    __builtin_cpu_init();
    if (simd_level >= FDL_SIMD_AVX512 && fdl_qi8_amx_ok()) return FDL_QI8_AMX;
    if (simd_level >= FDL_SIMD_AVX512 && __builtin_cpu_supports("avx512vnni"))
        return FDL_QI8_AVX512VNNI;
    if (simd_level >= FDL_SIMD_AVX2)
        return __builtin_cpu_supports("avxvnni") ? FDL_QI8_AVXVNNI : FDL_QI8_AVX2;
#endif
    (void)simd_level;
    return FDL_QI8_SCALAR;
}

const fdl_qi8_kernels *fdl_qi8_table(int tier) {
#if FDL_HAVE_AVX2_TARGET
    switch (tier) {
#if FDL_QI8_HAVE_AMX
    case FDL_QI8_AMX: return &K_AMX;
#endif
    case FDL_QI8_AVX512VNNI: return &K_AVX512;
    case FDL_QI8_AVXVNNI: return &K_AVXVNNI;
    case FDL_QI8_AVX2: return &K_AVX2;
    default: break;
    }
#endif
    (void)tier;
    return &K_SCALAR;
}

int fdl_qi8_tier_runs(int tier, int simd_level) {
#if FDL_HAVE_AVX2_TARGET
    __builtin_cpu_init();
    switch (tier) {
    case FDL_QI8_SCALAR: return 1;
    case FDL_QI8_AVX2: return simd_level >= FDL_SIMD_AVX2;
    case FDL_QI8_AVXVNNI: return simd_level >= FDL_SIMD_AVX2 && !!__builtin_cpu_supports("avxvnni");
    case FDL_QI8_AVX512VNNI:
        return simd_level >= FDL_SIMD_AVX512 && !!__builtin_cpu_supports("avx512vnni");
    case FDL_QI8_AMX: return simd_level >= FDL_SIMD_AVX512 && fdl_qi8_amx_ok();
    default: return 0;
    }
#endif
    return tier == FDL_QI8_SCALAR;
}
