/* Normalization kernels, included by normk.c once per (type, ISA).
 *
 * Expects T (float/double), NL (lanes: 16 float, 8 double, the same for every
 * ISA), NK_LANES (the lane tree of normk_simd.h for T), ATTR (target
 * attribute or empty), NK(name) (suffixes the name) and NK_STREAM (the ISA's
 * non-temporal line store).  Every loop is plain C over fixed lane arrays, so
 * the compiler vectorizes it with the ISA of ATTR while the order of every
 * rounding stays the same: the builds for every ISA agree bitwise
 * (fp-contract is off, no fast-math).  The four reductions (sumsq, row_sums,
 * rms_sums, seg_sums) are also the scalar twins of intrinsic overrides
 * (normk_sums_simd.h) that the SIMD tables list.
 *
 * xh = ((x - mh) - ml) * r is the normalized input: mh + ml is the float64
 * mean split into a head in T and the rest, so data far from zero keeps its
 * precision (x - mh is exact for x near the mean). */

/* Lane partial sums are flushed into double every NK_FLUSH elements (normk.h),
 * so a float lane adds at most NK_FLUSH / NL terms. */

/* y[j] = EXPR(j) for j < n.  With `stream` (and n >= 2 lines), the 64-byte
 * lines of y are computed into an L1 buffer of NK_CHUNK elements and written
 * from there with non-temporal stores (NK_STREAM, per ISA).  The unaligned
 * head and the tail are computed a whole line at a time (within the row) and
 * copied with plain stores.  The values are the same either way.  The caller
 * runs fdl_sfence() once per thread when it is done (not per call: a fence
 * waits for the streamed lines to drain). */
#define NK_LINE ((int64_t)(64 / sizeof(T)))
#define NK_CHUNK 256
#define NK_WRITE(y, n, stream, EXPR)                                                    \
    do {                                                                                \
        int64_t j_ = 0;                                                                 \
        if ((stream) && (n) >= 2 * NK_LINE && (uintptr_t)(y) % sizeof(T) == 0) {        \
            T buf_[NK_CHUNK] __attribute__((aligned(64)));                              \
            int64_t head_ = (int64_t)(((64 - ((uintptr_t)(y) & 63)) & 63) / sizeof(T)); \
            if (head_) {                                                                \
                for (int64_t k_ = 0; k_ < NK_LINE; k_++) buf_[k_] = EXPR(k_);           \
                memcpy((y), buf_, (size_t)head_ * sizeof(T));                           \
                j_ = head_;                                                             \
            }                                                                           \
            int64_t end_ = j_ + ((n) - j_) / NK_LINE * NK_LINE;                         \
            while (j_ < end_) {                                                         \
                int64_t m_ = end_ - j_ < NK_CHUNK ? end_ - j_ : NK_CHUNK;               \
                for (int64_t k_ = 0; k_ < m_; k_++) buf_[k_] = EXPR(j_ + k_);           \
                for (int64_t k_ = 0; k_ < m_; k_ += NK_LINE)                            \
                    NK_STREAM((y) + j_ + k_, buf_ + k_);                                \
                j_ += m_;                                                               \
            }                                                                           \
            if (j_ < (n)) {                                                             \
                int64_t t0_ = (n) - NK_LINE;                                            \
                for (int64_t k_ = 0; k_ < NK_LINE; k_++) buf_[k_] = EXPR(t0_ + k_);     \
                memcpy((y) + j_, buf_ + (j_ - t0_), (size_t)((n) - j_) * sizeof(T));    \
                j_ = (n);                                                               \
            }                                                                           \
        }                                                                               \
        for (; j_ < (n); j_++) (y)[j_] = EXPR(j_);                                      \
    } while (0)

/* ---- forward ---- */

/* Sum of squares of x[0:n] (RMS norm). */
static ATTR double NK(sumsq)(const T *restrict x, int64_t n) {
    double tot = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += NK_FLUSH) {
        int64_t i1 = n - i0 < NK_FLUSH ? n : i0 + NK_FLUSH, i = i0;
        T a[2 * NL] = {0};     /* 4 vector accumulators: add latency hidden */
        for (; i + 2 * NL <= i1; i += 2 * NL)
            for (int k = 0; k < 2 * NL; k++) a[k] += x[i + k] * x[i + k];
        for (; i < i1; i++) a[i & (2 * NL - 1)] += x[i] * x[i];
        tot += NK_LANES(a) + NK_LANES(a + NL);
    }
    return tot;
}


/* y = xh * w + b (per-element w, b: layer norm). */
static ATTR void NK(apply_row)(const T *restrict x, T *restrict y, int64_t n, T mh, T ml, T r,
                               const T *restrict w, const T *restrict b, int stream) {
#define E(j) (((x[j] - mh) - ml) * r * w[j] + b[j])
    NK_WRITE(y, n, stream, E);
#undef E
}

/* y = x * r * w (RMS norm). */
static ATTR void NK(apply_rms)(const T *restrict x, T *restrict y, int64_t n, T r,
                               const T *restrict w, int stream) {
#define E(j) (x[j] * r * w[j])
    NK_WRITE(y, n, stream, E);
#undef E
}

/* y = ((x - mh) - ml) * a + c (one channel: a = r * w[c], c = b[c]). */
static ATTR void NK(apply_chan)(const T *restrict x, T *restrict y, int64_t n, T mh, T ml, T a,
                                T c, int stream) {
#define E(j) (((x[j] - mh) - ml) * a + c)
    NK_WRITE(y, n, stream, E);
#undef E
}

/* Per-column version of apply_chan (batch norm over a short spatial extent). */
static ATTR void NK(apply_cols)(const T *restrict x, T *restrict y, int64_t n, const T *restrict mh, const T *restrict ml,
                                const T *restrict a, const T *restrict c, int stream) {
#define E(j) (((x[j] - mh[j]) - ml[j]) * a[j] + c[j])
    NK_WRITE(y, n, stream, E);
#undef E
}

/* ---- backward ----
 * dx goes to freshly allocated memory, where plain stores beat streamed ones.
 * g = dy * w; dx = ((g - c1) - xh * c2) * r with c1 = mean(g), c2 = mean(g xh)
 * over the statistic group (c1 = 0 for RMS norm). */

/* Layer norm row: s1 = sum(g), s2 = sum(g xh); dwp += dy xh, dbp += dy. */
static ATTR void NK(row_sums)(const T *restrict dy, const T *restrict x, int64_t n, T mh, T ml, T r,
                              const T *restrict w, T *restrict dwp, T *restrict dbp, double *restrict s1, double *restrict s2) {
    double t1 = 0.0, t2 = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += NK_FLUSH) {
        int64_t i1 = n - i0 < NK_FLUSH ? n : i0 + NK_FLUSH, i = i0;
        T a1[NL] = {0}, a2[NL] = {0};
        for (; i + NL <= i1; i += NL) {
            for (int k = 0; k < NL; k++) {
                T xh = ((x[i + k] - mh) - ml) * r, d = dy[i + k], g = d * w[i + k];
                a1[k] += g;
                a2[k] += g * xh;
                dwp[i + k] += d * xh;
                dbp[i + k] += d;
            }
        }
        for (; i < i1; i++) {
            T xh = ((x[i] - mh) - ml) * r, d = dy[i], g = d * w[i];
            a1[i & (NL - 1)] += g;
            a2[i & (NL - 1)] += g * xh;
            dwp[i] += d * xh;
            dbp[i] += d;
        }
        t1 += NK_LANES(a1);
        t2 += NK_LANES(a2);
    }
    *s1 = t1;
    *s2 = t2;
}


static ATTR void NK(row_dx)(const T *restrict dy, const T *restrict x, T *restrict dx, int64_t n,
                            T mh, T ml, T r, const T *restrict w, T c1, T c2) {
#define E(j) (((dy[j] * w[j] - c1) - (((x[j] - mh) - ml) * r) * c2) * r)
    for (int64_t j = 0; j < n; j++) dx[j] = E(j);
#undef E
}

/* RMS norm row: s2 = sum(g xh) with xh = x r; dwp += dy xh. */
static ATTR double NK(rms_sums)(const T *restrict dy, const T *restrict x, int64_t n, T r, const T *restrict w, T *restrict dwp) {
    double t2 = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += NK_FLUSH) {
        int64_t i1 = n - i0 < NK_FLUSH ? n : i0 + NK_FLUSH, i = i0;
        T a2[NL] = {0};
        for (; i + NL <= i1; i += NL) {
            for (int k = 0; k < NL; k++) {
                T xh = x[i + k] * r, d = dy[i + k];
                a2[k] += d * w[i + k] * xh;
                dwp[i + k] += d * xh;
            }
        }
        for (; i < i1; i++) {
            T xh = x[i] * r, d = dy[i];
            a2[i & (NL - 1)] += d * w[i] * xh;
            dwp[i] += d * xh;
        }
        t2 += NK_LANES(a2);
    }
    return t2;
}


static ATTR void NK(rms_dx)(const T *restrict dy, const T *restrict x, T *restrict dx, int64_t n,
                            T r, const T *restrict w, T c2) {
#define E(j) ((dy[j] * w[j] - (x[j] * r) * c2) * r)
    for (int64_t j = 0; j < n; j++) dx[j] = E(j);
#undef E
}

/* One channel segment: *A += sum(dy xh), *B += sum(dy). */
static ATTR void NK(seg_sums)(const T *restrict dy, const T *restrict x, int64_t n, T mh, T ml, T r,
                              double *restrict A, double *restrict B) {
    double tA = 0.0, tB = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += NK_FLUSH) {
        int64_t i1 = n - i0 < NK_FLUSH ? n : i0 + NK_FLUSH, i = i0;
        T a[NL] = {0}, b[NL] = {0};
        for (; i + NL <= i1; i += NL) {
            for (int k = 0; k < NL; k++) {
                T d = dy[i + k];
                a[k] += d * (((x[i + k] - mh) - ml) * r);
                b[k] += d;
            }
        }
        for (; i < i1; i++) {
            a[i & (NL - 1)] += dy[i] * (((x[i] - mh) - ml) * r);
            b[i & (NL - 1)] += dy[i];
        }
        tA += NK_LANES(a);
        tB += NK_LANES(b);
    }
    *A += tA;
    *B += tB;
}


/* One channel segment: dx = ((dy wk - c1) - xh c2) r. */
static ATTR void NK(seg_dx)(const T *restrict dy, const T *restrict x, T *restrict dx, int64_t n,
                            T mh, T ml, T r, T wk, T c1, T c2) {
#define E(j) (((dy[j] * wk - c1) - (((x[j] - mh) - ml) * r) * c2) * r)
    for (int64_t j = 0; j < n; j++) dx[j] = E(j);
#undef E
}

/* Per-column versions (batch norm over a short spatial extent). */
static ATTR void NK(col_sums)(const T *restrict dy, const T *restrict x, int64_t n, const T *restrict mh, const T *restrict ml,
                              const T *restrict r, T *restrict ap, T *restrict bp) {
    for (int64_t j = 0; j < n; j++) {
        T d = dy[j];
        ap[j] += d * (((x[j] - mh[j]) - ml[j]) * r[j]);
        bp[j] += d;
    }
}

static ATTR void NK(col_dx)(const T *restrict dy, const T *restrict x, T *restrict dx, int64_t n,
                            const T *restrict mh, const T *restrict ml, const T *restrict r,
                            const T *restrict w, const T *restrict c1, const T *restrict c2) {
#define E(j) (((dy[j] * w[j] - c1[j]) - (((x[j] - mh[j]) - ml[j]) * r[j]) * c2[j]) * r[j])
    for (int64_t j = 0; j < n; j++) dx[j] = E(j);
#undef E
}

/* Evaluation-mode batch norm (statistics are constants): dx = dy w r.  Kept
 * apart from seg_dx/col_dx so that an infinite x does not turn dx into nan
 * through xh * 0. */
static ATTR void NK(seg_scale)(const T *restrict dy, T *restrict dx, int64_t n, T wk, T r) {
#define E(j) ((dy[j] * wk) * r)
    for (int64_t j = 0; j < n; j++) dx[j] = E(j);
#undef E
}

static ATTR void NK(col_scale)(const T *restrict dy, T *restrict dx, int64_t n,
                               const T *restrict w, const T *restrict r) {
#define E(j) ((dy[j] * w[j]) * r[j])
    for (int64_t j = 0; j < n; j++) dx[j] = E(j);
#undef E
}
