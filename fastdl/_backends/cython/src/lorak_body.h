/* LoRA / attention kernels over one float type, included by lorak_types.h once
 * per (type, ISA).  Expects T, LK_EXP_CORE, LK_MIN, LK_LO, LK_HI (decodek_exp.h's
 * exp of T and its range), ATTR (target attribute or empty) and LK(name).
 * Plain loops over fixed lane arrays: the compiler vectorizes them for ATTR
 * while every rounding stays in the scalar order (fp-contract off, no
 * fast-math), so every ISA's table is bitwise equal. */

#define LANES FDL_LORAK_LANES
/* the exp of d = s - max <= 0 from its core (decodek_exp.h): 0 below LK_LO, and
 * d itself when d is NaN (a NaN entry, inf - inf at a +inf max, or an all -inf
 * row), so that the sum, and the row, become NaN */
#define LK_FIX(d, e) ((d) >= LK_LO ? (e) : ((d) == (d) ? (T)0 : (d)))

static ATTR void LK(softmax_row)(T *s, int64_t n, int64_t m) {
    T mx[LANES];
    for (int l = 0; l < LANES; l++) mx[l] = -(T)INFINITY;
    int64_t i = 0;
    /* NaN never wins a compare: the max of the rest; the NaN shows in the exp pass */
    for (; i + LANES <= m; i += LANES)
        for (int l = 0; l < LANES; l++) mx[l] = s[i + l] > mx[l] ? s[i + l] : mx[l];
    T top = -(T)INFINITY;
    for (int l = 0; l < LANES; l++) top = mx[l] > top ? mx[l] : top;
    for (; i < m; i++) top = s[i] > top ? s[i] : top;

    double acc[LANES];
    for (int l = 0; l < LANES; l++) acc[l] = 0.0;
    i = 0;
    for (; i + LANES <= m; i += LANES) {
        T d[LANES], e[LANES];
        /* split in passes so that every ISA's vectorizer takes them (AVX2 has no
         * mask registers for one loop with selects around the exp) */
        for (int l = 0; l < LANES; l++) d[l] = s[i + l] - top;
        for (int l = 0; l < LANES; l++) e[l] = LK_EXP_CORE(LK_MIN(d[l], LK_HI));
        for (int l = 0; l < LANES; l++) e[l] = LK_FIX(d[l], e[l]);
        for (int l = 0; l < LANES; l++) {
            s[i + l] = e[l];
            acc[l] += (double)e[l];
        }
    }
    for (int l = 0; i < m; i++, l++) {
        T d = s[i] - top;
        T e = LK_FIX(d, LK_EXP_CORE(LK_MIN(d, LK_HI)));
        s[i] = e;
        acc[l] += (double)e;
    }
    double sum = 0.0;
    for (int l = 0; l < LANES; l++) sum += acc[l];
    T den = (T)sum;
    for (i = 0; i < m; i++) s[i] = s[i] / den;
    for (; i < n; i++) s[i] = 0;
}

static ATTR void LK(softmax_bwd_row)(T *dp, const T *p, int64_t n, T scale) {
    double acc[LANES];
    for (int l = 0; l < LANES; l++) acc[l] = 0.0;
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += (double)dp[i + l] * (double)p[i + l];
    for (int l = 0; i < n; i++, l++) acc[l] += (double)dp[i] * (double)p[i];
    double sum = 0.0;
    for (int l = 0; l < LANES; l++) sum += acc[l];
    T r = (T)sum;
    for (i = 0; i < n; i++) dp[i] = (p[i] * (dp[i] - r)) * scale;
}

static ATTR void LK(mul)(const T *a, const T *b, T *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = a[i] * b[i];
}

static ATTR void LK(scale)(const T *a, T *y, int64_t n, T s) {
    for (int64_t i = 0; i < n; i++) y[i] = a[i] * s;
}

static ATTR void LK(add_rows)(T *a, int64_t m, int64_t n, const T *c) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) a[i * n + j] += c[j];
}

#undef LANES
#undef LK_FIX
