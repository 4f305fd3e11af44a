/* Plain-C bodies of the lookup-table kernels, compiled once per SIMD level by
 * including this file with ATTR (the target attribute) and FN(name) (the
 * suffixed name).  Elementwise float32 operations only, in the order qlutk.h
 * defines, so every compilation gives the same bits. */

#ifndef QL_OWN_TABLES
/* the tables (qlutk.h) of chunks [c0, c1); inputs >= d_in count as 0 */
ATTR void FN(tables)(const fdl_qlut_desc *q, const float *x, int64_t c0, int64_t c1,
                     float *tab) {
    int64_t d_in = q->d_in;
    for (int64_t c = c0; c < c1; c++) {
        float xs[32];
        int64_t i0 = 32 * c;
        for (int i = 0; i < 32; i++) xs[i] = i0 + i < d_in ? x[i0 + i] : 0.0f;
        if (q->nf4) {
            float *t = tab + (c - c0) * 512;
            for (int i = 0; i < 32; i++)
                for (int e = 0; e < 16; e++) t[16 * i + e] = fdl_qlut_nf4[e] * xs[i];
        } else {
            float *t = tab + (c - c0) * 128;
            for (int g = 0; g < 8; g++) {
                float *u = t + 16 * g;
                const float *v = xs + 4 * g;
                u[0] = 0.0f;
                u[1] = v[0];
                u[2] = v[1];
                u[3] = v[0] + v[1];
                for (int k = 0; k < 4; k++) u[4 + k] = u[k] + v[2];
                for (int k = 0; k < 8; k++) u[8 + k] = u[k] + v[3];
            }
        }
    }
}
#endif

/* the block scales of column j, decoded as the rows layout's (fastdl.quant), -> dst[b]
 * (contiguous, so the decode vectorizes) */
ATTR void FN(scales)(const fdl_qlut_desc *q, int64_t j, float *dst) {
    int64_t nb = q->nb;
    if (q->per_tensor) {
        dst[0] = q->scales[0];
        return;
    }
    if (!q->dq) {
        for (int64_t b = 0; b < nb; b++) dst[b] = q->scales[j * nb + b];
        return;
    }
    const int8_t *codes = q->sc_codes + j * nb;
    float mean = q->sc_mean;
    for (int64_t b = 0; b < nb;) {
        /* a run of one scale group (256 scales share one group scale) */
        int64_t u = j * nb + b, e = b + (256 - (u & 255));
        if (e > nb) e = nb;
        float gs = q->sc_scales[u >> 8];
        for (int64_t bb = b; bb < e; bb++) {
            float t = (float)codes[bb] * gs;
            t = t + mean;
            dst[bb] = t > 0.0f ? (t < FLT_MAX ? t : FLT_MAX) : 0.0f;
        }
        b = e;
    }
}
