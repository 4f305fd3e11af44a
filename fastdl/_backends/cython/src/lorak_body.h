/* LoRA / attention kernels over one float type, included by lorak_types.h once
 * per (type, ISA).  Expects T, LK_EXP_CORE, LK_MIN, LK_LO, LK_HI (decodek_exp.h's
 * exp of T and its range), SI (the signed integer of T's width), LK_MAG
 * (its all-ones magnitude mask), ATTR (target attribute or empty) and LK(name).
 * Plain loops over fixed lane arrays: the compiler vectorizes them for ATTR
 * while every rounding stays in the scalar order (fp-contract off, no
 * fast-math), so every ISA's table is bitwise equal. */

#define LANES FDL_LORAK_LANES

/* An integer increasing with the float (sign-magnitude to two's complement):
 * integer max is exact in any order, so the max pass vectorizes as a plain
 * reduction.  -0 sorts below +0; a NaN sorts above +inf or below -inf by its
 * sign, and either way the row comes out NaN (below). */
static inline ATTR SI LK(key)(T v) {
    SI b;
    memcpy(&b, &v, sizeof b);
    return b ^ ((b >> (8 * sizeof(SI) - 1)) & LK_MAG);
}

static inline ATTR T LK(unkey)(SI k) {
    SI b = k ^ ((k >> (8 * sizeof(SI) - 1)) & LK_MAG);
    T v;
    memcpy(&v, &b, sizeof v);
    return v;
}

static ATTR void LK(softmax_row)(T *s, int64_t n, int64_t m) {
    SI km[LANES], kmax = LK(key)(s[0]);
    for (int l = 0; l < LANES; l++) km[l] = kmax;
    int64_t i = 0;
    for (; i + LANES <= m; i += LANES) {
        SI b[LANES];
        memcpy(b, s + i, sizeof b);
        for (int l = 0; l < LANES; l++) {
            SI k = b[l] ^ ((b[l] >> (8 * sizeof(SI) - 1)) & LK_MAG);
            km[l] = k > km[l] ? k : km[l];
        }
    }
    for (; i < m; i++) {
        SI k = LK(key)(s[i]);
        kmax = k > kmax ? k : kmax;
    }
    for (int l = 0; l < LANES; l++) kmax = km[l] > kmax ? km[l] : kmax;
    T top = LK(unkey)(kmax);

    double acc[LANES];
    for (int l = 0; l < LANES; l++) acc[l] = 0.0;
    i = 0;
    for (; i + LANES <= m; i += LANES) {
        T d[LANES], e[LANES];
        SI db[LANES], eb[LANES];
        double ed[LANES];
        /* separate passes with bit masks instead of selects, so that every ISA's
         * vectorizer takes them: e = exp(d), 0 below LK_LO, and d itself where d
         * is NaN (a NaN entry or max, inf - inf at a +inf max, an all -inf row),
         * so that the sum, and the row, become NaN */
        for (int l = 0; l < LANES; l++) d[l] = s[i + l] - top;
        for (int l = 0; l < LANES; l++) e[l] = LK_EXP_CORE(LK_MIN(d[l], LK_HI));
        memcpy(db, d, sizeof d);
        memcpy(eb, e, sizeof e);
        for (int l = 0; l < LANES; l++)
            eb[l] = (eb[l] & -(SI)(d[l] >= LK_LO)) | (db[l] & -(SI)(d[l] != d[l]));
        memcpy(e, eb, sizeof e);
        for (int l = 0; l < LANES; l++) s[i + l] = e[l];
        for (int l = 0; l < LANES; l++) ed[l] = (double)e[l];
        for (int l = 0; l < LANES; l++) acc[l] += ed[l];
    }
    for (int l = 0; i < m; i++, l++) {
        T d = s[i] - top;
        T e = LK_EXP_CORE(LK_MIN(d, LK_HI));
        SI db, eb;
        memcpy(&db, &d, sizeof d);
        memcpy(&eb, &e, sizeof e);
        eb = (eb & -(SI)(d >= LK_LO)) | (db & -(SI)(d != d));
        memcpy(&e, &eb, sizeof e);
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
