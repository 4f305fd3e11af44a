/* Drivers of the moments kernels, written once over T and included by
 * moments.c per dtype.  Expects T, MT (the table type) and DRV(name) (the
 * public name).  They cut the data into blocks and merge the blocks' results
 * in a fixed order; the kernels come from the table the caller fetched. */

/* One row of any length: blocks in runs of FDL_ROW_RUN, merged in a fixed order. */
static void DRV(row_moments)(const MT *M, const T *x, int64_t n, double *mean, double *m2) {
    const int64_t blk = FDL_BLOCK_BYTES / (int64_t)sizeof(T);
    double tn = 0, tm = 0, tq = 0;
    double cnt[FDL_ROW_RUN], mu[FDL_ROW_RUN], q[FDL_ROW_RUN];
    for (int64_t off = 0; off < n; off += FDL_ROW_RUN * blk) {
        int64_t len = n - off < FDL_ROW_RUN * blk ? n - off : FDL_ROW_RUN * blk;
        int64_t nb = (len + blk - 1) / blk;
        M->blocks(x + off, len, blk, mu, q);
        for (int64_t b = 0; b < nb; b++)
            cnt[b] = (double)(len - b * blk < blk ? len - b * blk : blk);
        fdl_merge_tree(cnt, mu, q, nb);
        fdl_chan(&tn, &tm, &tq, cnt[0], mu[0], q[0]);
    }
    *mean = tm;
    *m2 = tq;
}

void DRV(rows_moments)(const MT *M, const T *x, int64_t nrows, int64_t D, double *mean,
                       double *m2) {
    if (D * (int64_t)sizeof(T) <= FDL_BLOCK_BYTES) {   /* one block per row, pipelined */
        M->blocks(x, nrows * D, D, mean, m2);
        return;
    }
    for (int64_t r = 0; r < nrows; r++) DRV(row_moments)(M, x + r * D, D, &mean[r], &m2[r]);
}

void DRV(seg_moments)(const MT *M, const T *x, int64_t nseg, int64_t len, int64_t stride,
                      double *work, double *mean, double *m2) {
    const int64_t blk = FDL_BLOCK_BYTES / (int64_t)sizeof(T);
    int64_t nb = (len + blk - 1) / blk, k = nseg * nb;
    double *cnt = work, *mu = work + k, *q = work + 2 * k;
    for (int64_t s = 0; s < nseg; s++) {
        if (s + 1 < nseg) fdl_prefetch(x + (s + 1) * stride, len * (int64_t)sizeof(T));
        M->blocks(x + s * stride, len, blk, mu + s * nb, q + s * nb);
        for (int64_t b = 0; b < nb; b++)
            cnt[s * nb + b] = (double)(len - b * blk < blk ? len - b * blk : blk);
    }
    if (k == 0) {
        *mean = *m2 = NAN;
        return;
    }
    fdl_merge_tree(cnt, mu, q, k);
    *mean = mu[0];
    *m2 = q[0];
}

/* kc[c * S + s] = K_c, the channel's pass-1 mean rounded to T (its column
 * sums combined in double). */
static void DRV(col_centers)(const T *col, int64_t C, int64_t S, double inv, T *kc) {
    for (int64_t c = 0; c < C; c++) {
        double t = 0.0;
        for (int64_t s = 0; s < S; s++) t += (double)col[c * S + s];
        T K = (T)(t * inv);
        for (int64_t s = 0; s < S; s++) kc[c * S + s] = K;
    }
}

/* Per channel: mean = K + sum(d) * inv (K itself when not finite) and M2. */
static void DRV(col_finish)(const T *sq, const T *dv, const T *kc, int64_t C, int64_t S,
                            int64_t rows, double inv, double *mean, double *m2) {
    for (int64_t c = 0; c < C; c++) {
        double s2 = 0.0, s1 = 0.0;
        for (int64_t s = 0; s < S; s++) {
            s2 += (double)sq[c * S + s];
            s1 += (double)dv[c * S + s];
        }
        double K = (double)kc[c * S];
        mean[c] = isfinite(K) ? K + s1 * inv : K;
        fdl_mom_finish(s2, s1, rows * S, &m2[c]);
    }
}

/* Per column j of a (rows, L = C*S) chunk, pass 1 sums the rows and pass 2
 * sums d = x - K_c and d^2 (K_c: the chunk's pass-1 mean of channel c), each
 * column adding its rows in order in T (rows is capped by the caller); the
 * columns are then combined per channel in double. */
void DRV(colmoments)(const MT *M, const T *x, int64_t rows, int64_t C, int64_t S, T *work,
                     double *mean, double *m2) {
    int64_t L = C * S;
    T *col = work, *kc = work + L, *sq = work + 2 * L, *dv = work + 3 * L;
    double inv = 1.0 / (double)(rows * S);
    for (int64_t j = 0; j < L; j++) col[j] = sq[j] = dv[j] = 0;
    M->colsum(x, rows, L, col);
    DRV(col_centers)(col, C, S, inv, kc);
    (L >= FDL_COL_STRIP_MIN ? M->coldev_strip : M->coldev)(x, rows, L, kc, sq, dv);
    DRV(col_finish)(sq, dv, kc, C, S, rows, inv, mean, m2);
}
