/* Lookup-table kernels (qlutk.h): the scalar twins, the per-level tables, the
 * serial driver over a range of tiles, and the layout conversion. */
#include "qlutk_int.h"

#include <stdlib.h>

const float fdl_qlut_nf4[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

#define ATTR
#define FN(name) fdl_qlut_##name##_scalar
#include "qlutk_body.h"
#undef ATTR
#undef FN

/* the scalar twin of fdl_qlut_run_avx2 / _avx512: the sequence of qlutk.h, lane by lane */
void fdl_qlut_run_scalar(const fdl_qlut_desc *q, const uint32_t *w, int64_t c0, int64_t c1,
                         const float *tab, int64_t ldt, int nr, const float *sc, float *st) {
    int W = q->bits, nf4 = q->nf4;
    int64_t tpc = nf4 ? 512 : 128;
    for (int r = 0; r < nr; r++) {
        float A[8][16], *S = st + r * FDL_QLUT_ST, *y = S + 128;
        ql_bcur bc = ql_bcur_init(q, c0);
        memcpy(A, S, sizeof A);
        for (int64_t c = c0; c < c1; c++) {
            const uint32_t *wc = w + (c - c0) * W * 16;
            const float *tc = tab + r * ldt + (c - c0) * tpc;
            for (int k = 0; k < W; k++)
                for (int l = 0; l < 16; l++) {
                    uint32_t v = wc[16 * k + l];
                    for (int m = 0; m < 8; m++, v >>= 4) {
                        const float *t = tc + 16 * (nf4 ? 8 * k + m : m);
                        A[2 * k + (m >> 2)][l] = A[2 * k + (m >> 2)][l] + t[v & 15];
                    }
                }
            if (c == bc.end) {
                const float *s = sc + 16 * bc.b;
                ql_bnext(q, &bc);
                for (int l = 0; l < 16; l++) y[l] = y[l] + s[l] * ql_part(q, (const float (*)[16])A, l);
                memset(A, 0, sizeof A);
            }
        }
        memcpy(S, A, sizeof A);
    }
}

static const fdl_qlut_kernels K_SCALAR = {
    2, fdl_qlut_tables_scalar, fdl_qlut_scales_scalar, fdl_qlut_run_scalar, NULL};
#if FDL_HAVE_AVX2_TARGET
static const fdl_qlut_kernels K_AVX2 = {
    1, fdl_qlut_tables_avx2, fdl_qlut_scales_avx2, fdl_qlut_run_avx2, NULL};
static const fdl_qlut_kernels K_AVX512 = {
    2, fdl_qlut_tables_avx512, fdl_qlut_scales_avx512, fdl_qlut_run_avx512,
    fdl_qlut_run2_avx512};
#endif

const fdl_qlut_kernels *fdl_qlut_table(int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX512) return &K_AVX512;
    if (level >= FDL_SIMD_AVX2) return &K_AVX2;
#endif
    (void)level;
    return &K_SCALAR;
}

int64_t fdl_qlut_tab_per_chunk(const fdl_qlut_desc *q) { return q->nf4 ? 512 : 128; }

/* scratch: scales (tiles * nb * 16) and one column's decoded scales (nb), none with q->tsc;
 * states (tiles * n * ST) */
int64_t fdl_qlut_scratch(const fdl_qlut_desc *q, int64_t n, int64_t tiles) {
    return (q->tsc ? 0 : tiles * q->nb * 16 + q->nb) + tiles * n * FDL_QLUT_ST;
}

/* the block scales of tiles [t0, t1) as the kernels read them, out[((t - t0) nb + b) 16 + l]
 * (0 past d_out); tmp: nb floats */
void fdl_qlut_tile_scales(const fdl_qlut_kernels *K, const fdl_qlut_desc *q, int64_t t0,
                          int64_t t1, float *out, float *tmp) {
    int64_t nb = q->nb;
    for (int64_t t = t0; t < t1; t++) {
        float *s = out + (t - t0) * nb * 16;
        for (int l = 0; l < 16; l++) {
            int64_t j = 16 * t + l;
            if (j < q->d_out) {
                K->scales(q, j, tmp);
                for (int64_t b = 0; b < nb; b++) s[16 * b + l] = tmp[b];
            } else {
                for (int64_t b = 0; b < nb; b++) s[16 * b + l] = 0.0f;
            }
        }
    }
}

void fdl_qlut_tables_rows(const fdl_qlut_kernels *K, const fdl_qlut_desc *q, const float *x,
                          int64_t n, int64_t c0, int64_t c1, float *tabs) {
    int64_t tpc = fdl_qlut_tab_per_chunk(q);
    for (int64_t r = 0; r < n; r++)
        K->tables(q, x + r * q->d_in, c0, c1, tabs + (r * q->NC + c0) * tpc);
}

/* Input blocks of q->ib chunks, outermost: their tables (q->tabs, all rows) stay in
 * L1/L2 while every tile of the range streams its codes for the block; rows in groups of
 * rmax share each loaded word.  The states carry the chains across input blocks, so the
 * blocking does not change any sum.  The tiles' scales come from q->tsc when the caller
 * keeps them (fdl_qlut_tile_scales once per tensor), else they are decoded here. */
void fdl_qlut_tiles(const fdl_qlut_kernels *K, const fdl_qlut_desc *q, int64_t n, int64_t t0,
                    int64_t t1, float *y, float *scratch) {
    int64_t nt = t1 - t0, nb = q->nb, NC = q->NC, W = q->bits, tpc = fdl_qlut_tab_per_chunk(q);
    int64_t ldt = NC * tpc;                  /* a row's tables */
    float *st = scratch + (q->tsc ? 0 : nt * nb * 16 + nb);
    const float *sc = q->tsc ? q->tsc + t0 * nb * 16 : scratch;
    if (!q->tsc) fdl_qlut_tile_scales(K, q, t0, t1, scratch, scratch + nt * nb * 16);
    memset(st, 0, (size_t)(nt * n * FDL_QLUT_ST) * sizeof(float));
    for (int64_t cb = 0; cb < NC; cb += q->ib) {
        int64_t ce = cb + q->ib < NC ? cb + q->ib : NC;
        const float *tb = q->tabs + cb * tpc;
        for (int64_t r0 = 0; r0 < n; r0 += K->rmax) {
            int nr = (int)(n - r0 < K->rmax ? n - r0 : K->rmax);
            int64_t t = t0;
            if (K->run2 && nr == 1 && q->nf4)
                for (; t + 1 < t1; t += 2)
                    K->run2(q, q->lut + (t * NC + cb) * W * 16, NC * W * 16, cb, ce,
                            tb + r0 * ldt, sc + (t - t0) * nb * 16, nb * 16,
                            st + ((t - t0) * n + r0) * FDL_QLUT_ST, n * FDL_QLUT_ST);
            for (; t < t1; t++)
                K->run(q, q->lut + (t * NC + cb) * W * 16, cb, ce, tb + r0 * ldt, ldt, nr,
                       sc + (t - t0) * nb * 16, st + ((t - t0) * n + r0) * FDL_QLUT_ST);
        }
    }
    for (int64_t t = t0; t < t1; t++)
        for (int64_t r = 0; r < n; r++) {
            const float *ys = st + ((t - t0) * n + r) * FDL_QLUT_ST + 128;
            for (int l = 0; l < 16 && 16 * t + l < q->d_out; l++) y[r * q->d_out + 16 * t + l] = ys[l];
        }
}

/* ---- layout conversion */

/* the 32 codes of chunk c of a rows-layout row (fastdl.quant: groups of 64, byte i =
 * values i (low nibble) and i + 32 (high); a short last group of g values: h = ceil(g/2),
 * byte i = values i and i + h); inputs >= d_in -> `pad` */
static void ql_row_chunk(const uint8_t *row, int64_t d_in, int64_t c, unsigned pad, uint8_t *out) {
    int64_t G = d_in >> 6;
    if ((c >> 1) < G) {                 /* a half of a full group: one nibble of 32 bytes */
        const uint8_t *p = row + 32 * (c >> 1);
        int sh = 4 * (int)(c & 1);
        for (int i = 0; i < 32; i++) out[i] = (uint8_t)((p[i] >> sh) & 15u);
        return;
    }
    for (int i = 0; i < 32; i++) {
        int64_t r = 32 * c + i;
        if (r >= d_in) { out[i] = (uint8_t)pad; continue; }
        int64_t g = r >> 6;
        if (g < G) {
            int64_t ii = r & 63;
            out[i] = ii < 32 ? row[32 * g + ii] & 15u : row[32 * g + ii - 32] >> 4;
        } else {
            int64_t rr = r - 64 * G, h = (d_in - 64 * G + 1) / 2;
            out[i] = rr < h ? row[32 * G + rr] & 15u : row[32 * G + rr - h] >> 4;
        }
    }
}

int fdl_qlut_pack_tile(const uint8_t *rows, int64_t rowb, int64_t d_in, int64_t d_out, int bits,
                       int nf4, int64_t t, uint32_t *lut) {
    int64_t NC = (d_in + 31) / 32;
    int W = bits, bad = 0;
    unsigned zero = nf4 ? 7u : 1u << (bits - 1), flip = nf4 ? 0u : 1u << (bits - 1);
    uint8_t cd[32];
    for (int l = 0; l < 16; l++) {
        int64_t j = 16 * t + l;
        for (int64_t c = 0; c < NC; c++) {
            uint32_t *wc = lut + (t * NC + c) * W * 16;
            if (j < d_out) {
                ql_row_chunk(rows + j * rowb, d_in, c, zero, cd);
            } else {
                memset(cd, (int)zero, 32);
            }
            for (int k = 0; k < W; k++) {
                uint32_t v = 0;
                if (nf4) {
                    for (int m = 0; m < 8; m++) v |= (uint32_t)cd[8 * k + m] << (4 * m);
                } else {            /* bit 4m + i = input 4m + i of the chunk */
                    for (int r = 0; r < 32; r++) v |= (uint32_t)(((cd[r] ^ flip) >> k) & 1u) << r;
                }
                wc[16 * k + l] = v;
            }
            if (!nf4)
                for (int i = 0; i < 32; i++) bad |= cd[i] >> bits;
        }
    }
    return bad != 0;
}

void fdl_qlut_unpack_tile(const uint32_t *lut, int64_t d_in, int64_t d_out, int bits, int nf4,
                          int64_t t, uint8_t *rows, int64_t rowb) {
    int64_t NC = (d_in + 31) / 32, G = d_in >> 6;
    int W = bits;
    unsigned flip = nf4 ? 0u : 1u << (bits - 1);
    for (int l = 0; l < 16; l++) {
        int64_t j = 16 * t + l;
        if (j >= d_out) break;
        uint8_t *row = rows + j * rowb;
        memset(row, 0, (size_t)rowb);
        for (int64_t c = 0; c < NC; c++) {
            const uint32_t *wc = lut + (t * NC + c) * W * 16;
            uint8_t cd[32];
            if (nf4) {
                for (int i = 0; i < 32; i++) cd[i] = (uint8_t)((wc[16 * (i >> 3) + l] >> (4 * (i & 7))) & 15u);
            } else {
                memset(cd, 0, 32);
                for (int k = 0; k < W; k++) {
                    uint32_t v = wc[16 * k + l];
                    for (int i = 0; i < 32; i++) cd[i] |= (uint8_t)(((v >> i) & 1u) << k);
                }
                for (int i = 0; i < 32; i++) cd[i] ^= (uint8_t)flip;
            }
            if ((c >> 1) < G) {             /* a half of a full group: one nibble of 32 bytes */
                uint8_t *p = row + 32 * (c >> 1);
                if (c & 1) {
                    for (int i = 0; i < 32; i++) p[i] |= (uint8_t)(cd[i] << 4);
                } else {
                    for (int i = 0; i < 32; i++) p[i] |= cd[i];
                }
                continue;
            }
            for (int i = 0; i < 32; i++) {
                int64_t r = 32 * c + i;
                if (r >= d_in) break;
                unsigned code = cd[i];
                int64_t g = r >> 6;
                if (g < G) {
                    int64_t ii = r & 63;
                    if (ii < 32) row[32 * g + ii] |= (uint8_t)code;
                    else row[32 * g + ii - 32] |= (uint8_t)(code << 4);
                } else {
                    int64_t rr = r - 64 * G, h = (d_in - 64 * G + 1) / 2;
                    if (rr < h) row[32 * G + rr] |= (uint8_t)code;
                    else row[32 * G + rr - h] |= (uint8_t)(code << 4);
                }
            }
        }
    }
}
