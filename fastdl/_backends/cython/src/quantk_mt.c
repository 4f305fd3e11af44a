/* y = x @ W.T for small n: per element y[i, r] = fma(x[i, j] * s_jb, unit, y[i, r])
 * for j = 0, 1, ... in order, so any split of d_in into chunks (threads) and any
 * number of storage rows per pass give the same bits. */
#include "quantk_int.h"

#include <stdlib.h>

/* scalar twin: storage row j into y rows [a, e) */
void fdl_qk_mt_range_scalar(const fdl_qk_desc *q, const uint8_t *row, int64_t j, const float *x,
                            int64_t n, float *y, int64_t ldy, int64_t yoff, int64_t a, int64_t e) {
    int64_t d_out = q->d_out;
    int64_t bprev = -1;
    float s = 0.0f;
    qk_bcur bc = qk_bcur_init(q, a);
    for (int64_t r = a; r < e; r++) {
        int64_t b = qk_bcur_at(&bc, r);
        if (b != bprev) { s = qk_scale(q, j, b); bprev = b; }
        float u = qk_unit(q, row, r);
        for (int64_t i = 0; i < n; i++) {
            float c = x[i * d_out + j] * s;
            y[i * ldy + r - yoff] = fmaf(c, u, y[i * ldy + r - yoff]);
        }
    }
}

void fdl_qk_mt_rows_scalar(const fdl_qk_desc *q, int64_t j, int jb, const float *x, int64_t n,
                           float *y, int64_t ldy, int64_t yoff, int64_t a, int64_t e, float *cs) {
    (void)cs;
    for (int jj = 0; jj < jb; jj++)
        fdl_qk_mt_range_scalar(q, q->data + (j + jj) * q->rowb, j + jj, x, n, y, ldy, yoff, a, e);
}

/* row chunks of d_in (multiples of 64), at most RCH rows, at least one per thread */
void fdl_qk_mt_plan(const fdl_qk_desc *q, int64_t n, int nthreads, int64_t *chp, int64_t *nchp) {
    int64_t d_in = q->d_in, d_out = q->d_out;
    int64_t RCH = 8192 / (n < 1 ? 1 : n);
    RCH = RCH < 256 ? 256 : RCH > 2048 ? 2048 : RCH;
    RCH &= ~(int64_t)63;
    int64_t nch = (d_in + RCH - 1) / RCH;
    if (nch < nthreads && d_in * d_out * n >= 32768) nch = nthreads;
    int64_t ch = (d_in + nch - 1) / nch;
    ch = (ch + 63) & ~(int64_t)63;
    *chp = ch;
    *nchp = (d_in + ch - 1) / ch;
}

/* chunk c accumulates in a private buffer with a padded row stride (rows of y are
 * d_in apart: 4 KiB aliasing and L1 set conflicts for many rows) */
void fdl_qk_mt_chunk(const fdl_qk_kernels *K, const fdl_qk_desc *q, int64_t c, int64_t ch,
                     const float *x, int64_t n, float *y, float *cs, float *yb, int64_t ldb) {
    int64_t d_in = q->d_in, d_out = q->d_out;
    int64_t a = c * ch, e = a + ch < d_in ? a + ch : d_in;
    memset(yb, 0, (size_t)(n * ldb) * sizeof(float));
    int64_t j = 0;
    for (; j + 4 <= d_out; j += 4) K->mt_rows(q, j, 4, x, n, yb, ldb, a, a, e, cs);
    for (; j < d_out; j++) K->mt_rows(q, j, 1, x, n, yb, ldb, a, a, e, cs);
    for (int64_t i = 0; i < n; i++)
        memcpy(y + i * d_in + a, yb + i * ldb, (size_t)(e - a) * sizeof(float));
}

void fdl_qk_mt_chunk_f64(const fdl_qk_kernels *K, const fdl_qk_desc *q, int64_t c, int64_t ch,
                         const double *x, int64_t n, double *y, float *ubuf) {
    int64_t d_in = q->d_in, d_out = q->d_out;
    int64_t a = c * ch, e = a + ch < d_in ? a + ch : d_in;
    for (int64_t i = 0; i < n; i++) memset(y + i * d_in + a, 0, (size_t)(e - a) * sizeof(double));
    for (int64_t j = 0; j < d_out; j++) {
        K->dec_range(q, j, a, e, ubuf);
        for (int64_t i = 0; i < n; i++) {
            double c2 = x[i * d_out + j];
            double *yi = y + i * d_in;
            for (int64_t r = a; r < e; r++) yi[r] += c2 * (double)ubuf[r - a];
        }
    }
}
