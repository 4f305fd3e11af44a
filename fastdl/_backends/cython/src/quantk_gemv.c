/* y = x @ W for small n (the "fused" path): the scalar twins of the SIMD
 * overrides and the serial per-column-group drivers _quant.pyx runs in
 * parallel.  Lane orders and sums: quantk.h. */
#include "quantk_int.h"

/* The scalar tail of one (row, column) dot product: values [rs, d_in). */
static NOINLINE float mv_tail(const fdl_qk_desc *q, const uint8_t *row, int64_t j, const float *x,
                              int64_t rs) {
    float tot = 0.0f, acc = 0.0f;
    if (rs >= q->d_in) return tot;
    int64_t b = qk_block(q, rs);
    qk_bcur bc = qk_bcur_init(q, rs);
    for (int64_t r = rs; r < q->d_in; r++) {
        int64_t bb = qk_bcur_at(&bc, r);
        if (bb != b) {
            tot = tot + acc * qk_scale(q, j, b);
            acc = 0.0f;
            b = bb;
        }
        acc = acc + x[r] * qk_unit(q, row, r);
    }
    return tot + acc * qk_scale(q, j, b);
}

/* n = 1, fast part of one (row, column) product in the 8-lane order of quantk.h;
 * x in the lane order (NF4: xl) */
void fdl_qk_mv_fast_scalar(const fdl_qk_desc *q, const uint8_t *row, int64_t j, const float *x,
                           int64_t nHf, int64_t hpb, float *res) {
    float A[4][8], T[8];
    memset(A, 0, sizeof A);
    memset(T, 0, sizeof T);
    int64_t cnt = 0, b = 0;
    for (int64_t H = 0; H < nHf; H++) {
        for (int v = 0; v < 4; v++)
            for (int l = 0; l < 8; l++) {
                int64_t r = 32 * H + (q->nf4 ? qk_lane_idx(v, l) : 8 * v + l);
                int64_t xi = 32 * H + 8 * (q->nf4 ? qk_xl_pos(v) : v) + l;
                A[v][l] = fmaf(x[xi], qk_unit(q, row, r), A[v][l]);
            }
        if (++cnt == hpb || H + 1 == nHf) {
            float s = qk_scale(q, j, b);
            for (int l = 0; l < 8; l++) {
                float c = (A[0][l] + A[1][l]) + (A[2][l] + A[3][l]);
                T[l] = fmaf(c, s, T[l]);
                A[0][l] = A[1][l] = A[2][l] = A[3][l] = 0.0f;
            }
            cnt = 0;
            b++;
        }
    }
    *res = ((T[0] + T[4]) + (T[2] + T[6])) + ((T[1] + T[5]) + (T[3] + T[7]));
}

/* n >= 2, one (row, column) in the lane order of quantk.h */
static float mvv1(const float *val, const float *x, int64_t nV) {
    float A[2][8];
    memset(A, 0, sizeof A);
    for (int64_t H = 0; H < nV; H++)
        for (int v = 0; v < 4; v++)
            for (int l = 0; l < 8; l++) {
                int64_t r = 32 * H + 8 * v + l;
                A[v & 1][l] = fmaf(x[r], val[r], A[v & 1][l]);
            }
    float T[8];
    for (int l = 0; l < 8; l++) T[l] = A[0][l] + A[1][l];
    return ((T[0] + T[4]) + (T[2] + T[6])) + ((T[1] + T[5]) + (T[3] + T[7]));
}

void fdl_qk_mvv_scalar(const float *val, int64_t ldv, int nc, const float *x, int64_t ldx, int nr,
                       int64_t nV, float *res) {
    for (int i = 0; i < nr; i++)
        for (int c = 0; c < nc; c++) res[i * MV_COLS + c] = mvv1(val + c * ldv, x + i * ldx, nV);
}

/* the values after the whole chunks, in order */
static NOINLINE float mvv_tail(const float *val, const float *x, int64_t r0, int64_t d_in) {
    float acc = 0.0f;
    for (int64_t r = r0; r < d_in; r++) acc = acc + x[r] * val[r];
    return acc;
}

static inline int64_t mv_fast_halves(const fdl_qk_desc *q) {
    return (q->per_tensor || q->bs % 32 == 0) ? qk_halves(q) : 0;
}

int64_t fdl_qk_mv1_xl_len(const fdl_qk_desc *q) {
    return q->nf4 ? 32 * mv_fast_halves(q) : 0;
}

void fdl_qk_mv1_perm(const fdl_qk_desc *q, const float *x, float *xl) {
    int64_t nHf = mv_fast_halves(q);
    for (int64_t H = 0; H < nHf; H++)
        for (int v = 0; v < 4; v++)
            for (int l = 0; l < 8; l++)
                    xl[32 * H + 8 * qk_xl_pos(v) + l] = x[32 * H + qk_lane_idx(v, l)];
}

void fdl_qk_mv1_cols(const fdl_qk_kernels *K, const fdl_qk_desc *q, const float *x,
                     const float *xl, float *y, int64_t j0, int64_t j1) {
    int64_t nHf = mv_fast_halves(q);
    int64_t hpb = q->per_tensor ? INT64_MAX : q->bs / 32;
    void (*fast)(const fdl_qk_desc *, const uint8_t *, int64_t, const float *, int64_t, int64_t,
                 float *) = K->mv_fast[qk_kind(q)];
    const float *xf = xl ? xl : x;
    for (int64_t j = j0; j < j1; j++) {
        /* factored: per-block unit sums times the block scale */
        const uint8_t *row = q->data + j * q->rowb;
        float res = 0.0f;
        if (nHf > 0) fast(q, row, j, xf, nHf, hpb, &res);
        if (32 * nHf < q->d_in) res = res + mv_tail(q, row, j, x, 32 * nHf);
        y[j] = res;
    }
}

void fdl_qk_mvn_cols(const fdl_qk_kernels *K, const fdl_qk_desc *q, const float *xp, int64_t ldp,
                     int64_t n, float *y, int64_t j0, int64_t j1, float *val) {
    int64_t d_in = q->d_in, d_out = q->d_out, nV = d_in / 32;
    int nc = (int)(j1 - j0);
    float res[2 * MV_COLS];
    for (int c = 0; c < nc; c++) K->dec_range(q, j0 + c, 0, d_in, val + c * ldp);
    for (int64_t i = 0; i < n; i += 2) {
        int nr = n - i < 2 ? 1 : 2;
        K->mvv(val, ldp, nc, xp + i * ldp, ldp, nr, nV, res);
        for (int ii = 0; ii < nr; ii++)
            for (int c = 0; c < nc; c++) y[(i + ii) * d_out + j0 + c] = res[ii * MV_COLS + c];
    }
    if (32 * nV < d_in)
        for (int64_t i = 0; i < n; i++)
            for (int c = 0; c < nc; c++)
                y[i * d_out + j0 + c] = y[i * d_out + j0 + c] +
                    mvv_tail(val + c * ldp, xp + i * ldp, 32 * nV, d_in);
}

/* float64 activations: per column, the float32 values decoded once, double dot
 * products (4 partial sums) */
void fdl_qk_mv_col_f64(const fdl_qk_kernels *K, const fdl_qk_desc *q, int64_t j, const double *x,
                       int64_t n, double *y, float *vbuf) {
    int64_t d_in = q->d_in;
    K->dec_range(q, j, 0, d_in, vbuf);
    for (int64_t i = 0; i < n; i++) {
        const double *xi = x + i * d_in;
        double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        int64_t r = 0;
        for (; r + 4 <= d_in; r += 4) {
            a0 += xi[r] * (double)vbuf[r]; a1 += xi[r + 1] * (double)vbuf[r + 1];
            a2 += xi[r + 2] * (double)vbuf[r + 2]; a3 += xi[r + 3] * (double)vbuf[r + 3];
        }
        for (; r < d_in; r++) a0 += xi[r] * (double)vbuf[r];
        y[i * q->d_out + j] = (a0 + a1) + (a2 + a3);
    }
}
