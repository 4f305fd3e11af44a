/* quantize: float32 weights -> packed codes and block scales; the tables of
 * units the other kernel files share.  Tiles of block rows x column strips: the
 * block absmax is a max over rows of vectors along j, the codes go through a
 * small transposed buffer, then are packed into the storage rows. */
#include "quantk_int.h"

#include <math.h>

#ifndef QZ_JS
#define QZ_JS 512
#endif

const float fdl_qk_nf4_cb[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
float fdl_qk_nf4_t[16];
float fdl_qk_units[5][16];
uint8_t fdl_qk_unit_planes[5][4][16];

void fdl_qk_init(void) {
    for (int t = 0; t < 5; t++) {
        for (int c = 0; c < 16; c++) {
            /* table 1 (1-bit codes) is not a format; it holds the 2-bit units */
            int bits = t < 2 ? 2 : t;
            float u = t == 0 ? fdl_qk_nf4_cb[c] : (float)(c - (1 << (bits - 1)));
            uint32_t b;
            memcpy(&b, &u, 4);
            fdl_qk_units[t][c] = u;
            for (int k = 0; k < 4; k++) fdl_qk_unit_planes[t][k][c] = (uint8_t)(b >> (8 * k));
        }
    }
    for (int k = 0; k < 15; k++) {
        double mid = ((double)fdl_qk_nf4_cb[k] + (double)fdl_qk_nf4_cb[k + 1]) / 2;
        float t = (float)mid;
        if ((double)t > mid) t = nextafterf(t, -INFINITY);
        fdl_qk_nf4_t[k] = t;
    }
    fdl_qk_nf4_t[15] = INFINITY;
}

const float *fdl_qk_nf4_thresholds(void) { return fdl_qk_nf4_t; }

static inline int qz_code_scalar(const qz_t *z, float w, float div, int zero) {
    float v = w / div;
    if (z->nf4) {
        int c = 0;
        for (int k = 0; k < 15; k++) c += v > fdl_qk_nf4_t[k];
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

void fdl_qk_qz_tile_scalar(const qz_t *z, const float *w, int64_t j0, int64_t jw, int64_t r0,
                           int64_t r1, uint8_t *buf, int64_t R, float *scales, float *msc) {
    (void)msc;
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

void fdl_qk_qplan_init(fdl_qk_qplan *z, int64_t d_in, int64_t d_out, int bits, int nf4,
                       int64_t bs, int floor_, int per_tensor, int nthreads) {
    z->bits = bits; z->nf4 = nf4; z->floor_ = floor_; z->per_tensor = per_tensor;
    z->d_in = d_in; z->d_out = d_out; z->bs = per_tensor ? d_in : bs;
    z->nb = per_tensor ? 1 : (d_in + bs - 1) / bs;
    z->rowb = bits > 4 ? d_in : 32 * (d_in / 64) + (d_in % 64 + 1) / 2;
    z->qmax = (float)((1 << (bits - 1)) - 1);
    z->coff = (bits <= 4 && !nf4) ? (1 << (bits - 1)) : 0;
    z->gscale = 0.0f;
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
    {   /* at least one strip per thread (each column is coded alone: the split only
         * changes who codes it) */
        int64_t nt = nthreads > 0 ? nthreads : 1;
        int64_t per = (d_out + nt - 1) / nt;
        per = (per + 7) & ~(int64_t)7;
        if (per < JS) JS = per < 8 ? 8 : per;
    }
    z->R = R;
    z->JS = JS;
    z->nstrips = (d_out + JS - 1) / JS;
}

uint32_t fdl_qk_absmax_bits(const float *w, int64_t i0, int64_t i1) {
    uint32_t mb = 0;
    for (int64_t i = i0; i < i1; i++) {
        uint32_t a = abs_bits(w[i]);
        mb = a > mb ? a : mb;
    }
    return mb;
}

float fdl_qk_qplan_tensor_scale(fdl_qk_qplan *z, uint32_t mb) {
    z->gscale = qz_scale(z, bits_float(mb));
    return z->gscale;
}

void fdl_qk_quantize_strip(const fdl_qk_kernels *K, const fdl_qk_qplan *z, const float *w,
                           int64_t s, uint8_t *data, float *scales, uint8_t *buf, float *msc) {
    int64_t d_in = z->d_in, R = z->R, JS = z->JS;
    int64_t j0 = s * JS, jw = z->d_out - j0 < JS ? z->d_out - j0 : JS;
    for (int64_t r0 = 0; r0 < d_in; r0 += R) {
        int64_t r1 = r0 + R < d_in ? r0 + R : d_in;
        K->qz_tile(z, w, j0, jw, r0, r1, buf, R, scales, msc);
        for (int64_t jj = 0; jj < jw; jj++) {
            uint8_t *row = data + (j0 + jj) * z->rowb;
            if (z->bits > 4) memcpy(row + r0, buf + jj * R, (size_t)(r1 - r0));
            else qz_pack(buf + jj * R, r0, r1 - r0, d_in, row);
        }
    }
}
