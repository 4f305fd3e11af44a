/* float16 normalization kernels (see normk16.h): chunks converted into L1
 * scratch, the float32 kernels of normk.c on the chunk, the output converted
 * back.  Every chunk boundary is a multiple of NK_FLUSH, so each float32
 * reduction called on a chunk returns exactly its part of the whole row's
 * sum, and adding the parts in order gives the row's sum bitwise. */
#include "normk16.h"

#include <math.h>

#include "f16.h"
#include "moments.h"
#include "normk.h"
#include "simd.h"

#define CH FDL_NK16_CHUNK
#define BLK (FDL_BLOCK_BYTES / 4)   /* float32 moments block: rows up to BLK are one block */
#define MIN(a, b) ((a) < (b) ? (a) : (b))
/* Elementwise passes and reductions go SUB elements at a time: the scratch of
 * a chunk and its output stay a small part of L1 beside the streams. */
#define SUB 1024
#define SCRATCH(name) float name[CH] __attribute__((aligned(64)))
#define SMALL(name) float name[SUB] __attribute__((aligned(64)))

_Static_assert(SUB == NK_FLUSH && CH % SUB == 0 && CH == BLK,
               "a chunk is one flush run; a whole-row scratch is one moments block");

void fdl_nk16_h2f(const uint16_t *h, float *f, int64_t n, int level) { fdl_h2f_row(h, f, n, level); }
void fdl_nk16_f2h(const float *f, uint16_t *h, int64_t n, int level) { fdl_f2h_row(f, h, n, level); }

/* Mean and M2 of a row of n, as fdl_rows_moments_f32 gives them for the
 * float32 row; when n <= CH, xs holds the converted row afterwards. */
static void row_moments(const uint16_t *x, int64_t n, int level, float *xs, double *mean,
                        double *m2) {
    if (n <= BLK) {
        fdl_h2f_row(x, xs, n, level);
        fdl_moments_blocks_f32(xs, n, n, level, mean, m2);
        return;
    }
    double tn = 0, tm = 0, tq = 0;
    double cnt[FDL_ROW_RUN], mu[FDL_ROW_RUN], q[FDL_ROW_RUN];
    for (int64_t off = 0; off < n; off += FDL_ROW_RUN * BLK) {
        int64_t len = MIN(n - off, FDL_ROW_RUN * BLK), nb = (len + BLK - 1) / BLK;
        for (int64_t b = 0; b < nb; b++) {
            int64_t lb = MIN(BLK, len - b * BLK);
            fdl_h2f_row(x + off + b * BLK, xs, lb, level);
            fdl_moments_blocks_f32(xs, lb, lb, level, &mu[b], &q[b]);
            cnt[b] = (double)lb;
        }
        fdl_merge_tree(cnt, mu, q, nb);
        fdl_chan(&tn, &tm, &tq, cnt[0], mu[0], q[0]);
    }
    *mean = tm;
    *m2 = tq;
}

/* Where chunk [j0, j0 + m) of a row of n goes in the scratch on the first
 * pass: in place when the whole row fits (later passes reuse it). */
static inline float *slot(float *buf, int64_t n, int64_t j0) { return n <= CH ? buf + j0 : buf; }

/* Converts chunk [j0, j0 + m) of a row of n into buf unless the row (n <= CH)
 * is already there; returns where the chunk's float32 values are. */
static inline const float *chunk(const uint16_t *x, int64_t n, int64_t j0, int64_t m, float *buf,
                                 int level) {
    if (n > CH) {
        fdl_h2f_row(x + j0, buf, m, level);
        return buf;
    }
    return buf + j0;
}

/* ---- forward ---- */

void fdl_nk16_layer_row(const uint16_t *x, uint16_t *y, int64_t D, const float *w,
                        const float *b, double eps, int level, double *mean, double *var) {
    const fdl_nk_f32 *K = fdl_nk_f32_table(level);
    SCRATCH(xs);
    SMALL(ys);
    double mu, q;
    row_moments(x, D, level, xs, &mu, &q);
    double v = q / (double)D;
    *mean = mu;
    *var = v;
    float mh = (float)mu, ml = (float)(mu - (double)mh), r = (float)(1.0 / sqrt(v + eps));
    for (int64_t j0 = 0; j0 < D; j0 += SUB) {
        int64_t m = MIN(SUB, D - j0);
        K->apply_row(chunk(x, D, j0, m, xs, level), ys, m, mh, ml, r, w + j0, b + j0, 0);
        fdl_f2h_row(ys, y + j0, m, level);
    }
}

void fdl_nk16_rms_row(const uint16_t *x, uint16_t *y, int64_t D, const float *w, double eps,
                      int level, double *ms) {
    const fdl_nk_f32 *K = fdl_nk_f32_table(level);
    SCRATCH(xs);
    SMALL(ys);
    double tot = 0.0;
    for (int64_t j0 = 0; j0 < D; j0 += SUB) {
        int64_t m = MIN(SUB, D - j0);
        float *xc = slot(xs, D, j0);
        fdl_h2f_row(x + j0, xc, m, level);
        tot += K->sumsq(xc, m);       /* m <= SUB = NK_FLUSH: one flush run */
    }
    double s = tot / (double)D;
    *ms = s;
    float r = (float)(1.0 / sqrt(s + eps));
    for (int64_t j0 = 0; j0 < D; j0 += SUB) {
        int64_t m = MIN(SUB, D - j0);
        K->apply_rms(chunk(x, D, j0, m, xs, level), ys, m, r, w + j0, 0);
        fdl_f2h_row(ys, y + j0, m, level);
    }
}

void fdl_nk16_apply_chan(const uint16_t *x, uint16_t *y, int64_t n, float mh, float ml, float a,
                         float c, int level) {
    const fdl_nk_f32 *K = fdl_nk_f32_table(level);
    SMALL(xs);
    SMALL(ys);
    for (int64_t j0 = 0; j0 < n; j0 += SUB) {
        int64_t m = MIN(SUB, n - j0);
        fdl_h2f_row(x + j0, xs, m, level);
        K->apply_chan(xs, ys, m, mh, ml, a, c, 0);
        fdl_f2h_row(ys, y + j0, m, level);
    }
}

void fdl_nk16_group_row(const uint16_t *x, uint16_t *y, int64_t Kc, int64_t S, const float *w,
                        const float *b, double eps, int level, double *mean, double *var) {
    const fdl_nk_f32 *K = fdl_nk_f32_table(level);
    SCRATCH(xs);
    SMALL(ys);
    int64_t M = Kc * S;
    double mu, q;
    row_moments(x, M, level, xs, &mu, &q);
    double v = q / (double)M, rs = 1.0 / sqrt(v + eps);
    *mean = mu;
    *var = v;
    float mh = (float)mu, ml = (float)(mu - (double)mh);
    for (int64_t c = 0; c < Kc; c++) {
        float a = (float)(rs * (double)w[c]);
        if (M > CH) {
            fdl_nk16_apply_chan(x + c * S, y + c * S, S, mh, ml, a, b[c], level);
            continue;
        }
        for (int64_t j0 = 0; j0 < S; j0 += SUB) {
            int64_t m = MIN(SUB, S - j0);
            K->apply_chan(xs + c * S + j0, ys, m, mh, ml, a, b[c], 0);
            fdl_f2h_row(ys, y + c * S + j0, m, level);
        }
    }
}

void fdl_nk16_apply_cols(const uint16_t *x, uint16_t *y, int64_t n, const float *mh,
                         const float *ml, const float *a, const float *c, int level) {
    const fdl_nk_f32 *K = fdl_nk_f32_table(level);
    SMALL(xs);
    SMALL(ys);
    for (int64_t j0 = 0; j0 < n; j0 += SUB) {
        int64_t m = MIN(SUB, n - j0);
        fdl_h2f_row(x + j0, xs, m, level);
        K->apply_cols(xs, ys, m, mh + j0, ml + j0, a + j0, c + j0, 0);
        fdl_f2h_row(ys, y + j0, m, level);
    }
}

void fdl_nk16_seg_moments(const uint16_t *x, int64_t nseg, int64_t len, int64_t stride,
                          int level, double *work, double *mean, double *m2) {
    int64_t nb = (len + BLK - 1) / BLK, k = nseg * nb;
    double *cnt = work, *mu = work + k, *q = work + 2 * k;
    for (int64_t s = 0; s < nseg; s++) {
        if (s + 1 < nseg) fdl_prefetch(x + (s + 1) * stride, len * 2);
        fdl_moments_blocks_f16(x + s * stride, len, BLK, level, mu + s * nb, q + s * nb);
        for (int64_t b = 0; b < nb; b++) cnt[s * nb + b] = (double)MIN(len - b * BLK, BLK);
    }
    if (k == 0) {
        *mean = *m2 = NAN;
        return;
    }
    fdl_merge_tree(cnt, mu, q, k);
    *mean = mu[0];
    *m2 = q[0];
}

/* ---- backward ---- */

void fdl_nk16_layer_bwd_row(const uint16_t *dy, const uint16_t *x, uint16_t *dx, int64_t D,
                            double mean, double rstd, const float *w, float *dwp, float *dbp,
                            int level) {
    const fdl_nk_f32 *K = fdl_nk_f32_table(level);
    SCRATCH(xs);
    SCRATCH(ds);
    SMALL(os);
    float mh = (float)mean, ml = (float)(mean - (double)mh), rs = (float)rstd;
    double s1 = 0.0, s2 = 0.0, t1, t2;
    for (int64_t j0 = 0; j0 < D; j0 += SUB) {
        int64_t m = MIN(SUB, D - j0);
        float *xc = slot(xs, D, j0), *dc = slot(ds, D, j0);
        fdl_h2f_row(x + j0, xc, m, level);
        fdl_h2f_row(dy + j0, dc, m, level);
        K->row_sums(dc, xc, m, mh, ml, rs, w + j0, dwp + j0, dbp + j0, &t1, &t2);
        s1 += t1;
        s2 += t2;
    }
    float c1 = (float)(s1 / (double)D), c2 = (float)(s2 / (double)D);
    for (int64_t j0 = 0; j0 < D; j0 += SUB) {
        int64_t m = MIN(SUB, D - j0);
        const float *xc = chunk(x, D, j0, m, xs, level), *dc = chunk(dy, D, j0, m, ds, level);
        K->row_dx(dc, xc, os, m, mh, ml, rs, w + j0, c1, c2);
        fdl_f2h_row(os, dx + j0, m, level);
    }
}

void fdl_nk16_rms_bwd_row(const uint16_t *dy, const uint16_t *x, uint16_t *dx, int64_t D,
                          double rstd, const float *w, float *dwp, int level) {
    const fdl_nk_f32 *K = fdl_nk_f32_table(level);
    SCRATCH(xs);
    SCRATCH(ds);
    SMALL(os);
    float rs = (float)rstd;
    double s2 = 0.0;
    for (int64_t j0 = 0; j0 < D; j0 += SUB) {
        int64_t m = MIN(SUB, D - j0);
        float *xc = slot(xs, D, j0), *dc = slot(ds, D, j0);
        fdl_h2f_row(x + j0, xc, m, level);
        fdl_h2f_row(dy + j0, dc, m, level);
        s2 += K->rms_sums(dc, xc, m, rs, w + j0, dwp + j0);
    }
    float c2 = (float)(s2 / (double)D);
    for (int64_t j0 = 0; j0 < D; j0 += SUB) {
        int64_t m = MIN(SUB, D - j0);
        const float *xc = chunk(x, D, j0, m, xs, level), *dc = chunk(dy, D, j0, m, ds, level);
        K->rms_dx(dc, xc, os, m, rs, w + j0, c2);
        fdl_f2h_row(os, dx + j0, m, level);
    }
}

/* seg_sums over float32 values already converted (n <= CH). */
static void seg_sums_f32(const fdl_nk_f32 *K, const float *ds, const float *xs, int64_t n,
                         float mh, float ml, float r, double *A, double *B) {
    for (int64_t k = 0; k < n; k += NK_FLUSH)
        K->seg_sums(ds + k, xs + k, MIN(NK_FLUSH, n - k), mh, ml, r, A, B);
}

void fdl_nk16_seg_sums(const uint16_t *dy, const uint16_t *x, int64_t n, float mh, float ml,
                       float r, double *A, double *B, int level) {
    const fdl_nk_f32 *K = fdl_nk_f32_table(level);
    SMALL(xs);
    SMALL(ds);
    for (int64_t j0 = 0; j0 < n; j0 += SUB) {
        int64_t m = MIN(SUB, n - j0);
        fdl_h2f_row(x + j0, xs, m, level);
        fdl_h2f_row(dy + j0, ds, m, level);
        seg_sums_f32(K, ds, xs, m, mh, ml, r, A, B);
    }
}

void fdl_nk16_seg_dx(const uint16_t *dy, const uint16_t *x, uint16_t *dx, int64_t n, float mh,
                     float ml, float r, float wk, float c1, float c2, int training, int level) {
    const fdl_nk_f32 *K = fdl_nk_f32_table(level);
    SMALL(xs);
    SMALL(ds);
    SMALL(os);
    for (int64_t j0 = 0; j0 < n; j0 += SUB) {
        int64_t m = MIN(SUB, n - j0);
        fdl_h2f_row(dy + j0, ds, m, level);
        if (training) {
            fdl_h2f_row(x + j0, xs, m, level);
            K->seg_dx(ds, xs, os, m, mh, ml, r, wk, c1, c2);
        } else {
            K->seg_scale(ds, os, m, wk, r);
        }
        fdl_f2h_row(os, dx + j0, m, level);
    }
}

void fdl_nk16_group_bwd_row(const uint16_t *dy, const uint16_t *x, uint16_t *dx, int64_t Kc,
                            int64_t S, double mean, double rstd, const float *w, double *A,
                            double *B, int level) {
    const fdl_nk_f32 *K = fdl_nk_f32_table(level);
    SCRATCH(xs);
    SCRATCH(ds);
    SMALL(os);
    int64_t M = Kc * S;
    float mh = (float)mean, ml = (float)(mean - (double)mh), rs = (float)rstd;
    double s1 = 0.0, s2 = 0.0;
    if (M <= CH) {
        fdl_h2f_row(x, xs, M, level);
        fdl_h2f_row(dy, ds, M, level);
    }
    for (int64_t c = 0; c < Kc; c++) {
        A[c] = 0;
        B[c] = 0;
        if (M <= CH)
            seg_sums_f32(K, ds + c * S, xs + c * S, S, mh, ml, rs, &A[c], &B[c]);
        else
            fdl_nk16_seg_sums(dy + c * S, x + c * S, S, mh, ml, rs, &A[c], &B[c], level);
        s1 = s1 + (double)w[c] * B[c];
        s2 = s2 + (double)w[c] * A[c];
    }
    float c1 = (float)(s1 / (double)M), c2 = (float)(s2 / (double)M);
    for (int64_t c = 0; c < Kc; c++) {
        if (M > CH) {
            fdl_nk16_seg_dx(dy + c * S, x + c * S, dx + c * S, S, mh, ml, rs, w[c], c1, c2, 1,
                            level);
            continue;
        }
        for (int64_t j0 = 0; j0 < S; j0 += SUB) {
            int64_t m = MIN(SUB, S - j0);
            K->seg_dx(ds + c * S + j0, xs + c * S + j0, os, m, mh, ml, rs, w[c], c1, c2);
            fdl_f2h_row(os, dx + c * S + j0, m, level);
        }
    }
}

void fdl_nk16_col_sums(const uint16_t *dy, const uint16_t *x, int64_t n, const float *mh,
                       const float *ml, const float *r, float *ap, float *bp, int level) {
    const fdl_nk_f32 *K = fdl_nk_f32_table(level);
    SMALL(xs);
    SMALL(ds);
    for (int64_t j0 = 0; j0 < n; j0 += SUB) {
        int64_t m = MIN(SUB, n - j0);
        fdl_h2f_row(x + j0, xs, m, level);
        fdl_h2f_row(dy + j0, ds, m, level);
        K->col_sums(ds, xs, m, mh + j0, ml + j0, r + j0, ap + j0, bp + j0);
    }
}

void fdl_nk16_col_dx(const uint16_t *dy, const uint16_t *x, uint16_t *dx, int64_t n,
                     const float *mh, const float *ml, const float *r, const float *w,
                     const float *c1, const float *c2, int training, int level) {
    const fdl_nk_f32 *K = fdl_nk_f32_table(level);
    SMALL(xs);
    SMALL(ds);
    SMALL(os);
    for (int64_t j0 = 0; j0 < n; j0 += SUB) {
        int64_t m = MIN(SUB, n - j0);
        fdl_h2f_row(dy + j0, ds, m, level);
        if (training) {
            fdl_h2f_row(x + j0, xs, m, level);
            K->col_dx(ds, xs, os, m, mh + j0, ml + j0, r + j0, w + j0, c1 + j0, c2 + j0);
        } else {
            K->col_scale(ds, os, m, w + j0, r + j0);
        }
        fdl_f2h_row(os, dx + j0, m, level);
    }
}
