/* RNN kernels, included by rnnk.c once per (type, ISA).
 *
 * Expects T (float/double), RK_TANH (rk_tanh_f32 / rk_tanh_f64 of
 * rnnk_tanh.h), ATTR (target attribute or empty) and RK(name) (suffixes the
 * name).  Every loop is elementwise, or runs along a row with the rows in a
 * fixed order, so the compiler vectorizes it with the ISA of ATTR while each
 * element rounds as in the scalar build: all builds agree bitwise. */

static ATTR void RK(bias_tanh)(T *restrict a, int64_t m, int64_t n, const T *restrict b) {
    for (int64_t i = 0; i < m; i++) {
        T *restrict r = a + i * n;
        if (b)
            for (int64_t j = 0; j < n; j++) r[j] = RK_TANH(r[j] + b[j]);
        else
            for (int64_t j = 0; j < n; j++) r[j] = RK_TANH(r[j]);
    }
}

static ATTR void RK(dtanh)(T *restrict d, const T *restrict h, int64_t n) {
    for (int64_t k = 0; k < n; k++) d[k] = d[k] * ((T)1 - h[k] * h[k]);
}

static ATTR void RK(add_rows)(T *restrict a, int64_t m, int64_t n, const T *restrict c) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) a[i * n + j] = a[i * n + j] + c[j];
}

static ATTR void RK(colsum)(const T *restrict a, int64_t m, int64_t n, T *restrict out,
                            double *restrict acc) {
    double *restrict tot = acc, *restrict blk = acc + n;
    for (int64_t j = 0; j < n; j++) tot[j] = 0.0;
    for (int64_t i0 = 0; i0 < m; i0 += FDL_RNNK_SUM_BLOCK) {
        int64_t i1 = m - i0 < FDL_RNNK_SUM_BLOCK ? m : i0 + FDL_RNNK_SUM_BLOCK;
        for (int64_t j = 0; j < n; j++) blk[j] = 0.0;
        for (int64_t i = i0; i < i1; i++)
            for (int64_t j = 0; j < n; j++) blk[j] += (double)a[i * n + j];
        for (int64_t j = 0; j < n; j++) tot[j] += blk[j];
    }
    for (int64_t j = 0; j < n; j++) out[j] = (T)tot[j];
}

static ATTR void RK(tanh)(const T *restrict x, T *restrict y, int64_t n) {
    for (int64_t k = 0; k < n; k++) y[k] = RK_TANH(x[k]);
}
