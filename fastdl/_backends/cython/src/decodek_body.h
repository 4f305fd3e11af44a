/* Decoding kernels over one float type, included by decodek_types.h once per
 * (type, ISA).  These are the scalar twins: the scalar table lists them all,
 * the SIMD tables list them beside the hand-written overrides of
 * decodek_avx2.c / decodek_avx512.c (which reuse the heap helpers below).
 *
 * Expects T (float/double), KT (unsigned key type of T's width), ST (the
 * signed type of that width), DK_EXP_CORE / DK_EXP (decodek_exp.h), DK_LANES
 * and DK_PART (the sums' lane layout, below), ATTR (target attribute or
 * empty) and DK(name) (suffixes the name with the type and ISA).  Loops are
 * plain C over fixed lane arrays: the compiler vectorizes them for ATTR while
 * every rounding stays in the scalar order (fp-contract is off, no
 * fast-math). */

#define DK_BITS ((int)(8 * sizeof(T)))
#define DK_TOP ((KT)1 << (DK_BITS - 1))

/* ------------------------------------------------------------------ heaps */

/* Heaps hold keys, not values: key(v) is an unsigned integer increasing with
 * v, with -0.0 and +0.0 the same key and every NaN the largest key, so the
 * total order is "larger key, then lower index" and compares are branch-free.
 * The values are taken back from the input by index at the end. */
static inline ATTR KT DK(key)(T v) {
    T w = v + (T)0;                     /* -0 -> +0 */
    KT b;
    memcpy(&b, &w, sizeof b);
    KT m = (KT)((ST)b >> (DK_BITS - 1)); /* all ones for negatives */
    KT kk = b ^ (m | DK_TOP);
    return v != v ? ~(KT)0 : kk;
}

static inline ATTR T DK(unkey)(KT kk) {
    KT b = (kk >> (DK_BITS - 1)) ? kk ^ DK_TOP : ~kk;
    T v;
    memcpy(&v, &b, sizeof v);
    return v;                           /* the largest key gives a NaN */
}

static inline ATTR int DK(better)(KT ka, int64_t ia, KT kb, int64_t ib) {
    return (ka > kb) | ((ka == kb) & (ia < ib));
}

/* put (kv, i) at pos of a heap (root = worst) and restore the heap below */
static inline ATTR void DK(sift_down)(KT *hk, int64_t *hi, int64_t size, int64_t pos, KT kv,
                                      int64_t i) {
    for (;;) {
        int64_t c = 2 * pos + 1;
        if (c >= size) break;
        if (c + 1 < size) c += DK(better)(hk[c], hi[c], hk[c + 1], hi[c + 1]);
        if (!DK(better)(kv, i, hk[c], hi[c])) break;
        hk[pos] = hk[c];
        hi[pos] = hi[c];
        pos = c;
    }
    hk[pos] = kv;
    hi[pos] = i;
}

static inline ATTR int64_t DK(push)(KT *hk, int64_t *hi, int64_t size, KT kv, int64_t i) {
    int64_t pos = size;
    while (pos > 0) {
        int64_t p = (pos - 1) >> 1;
        if (!DK(better)(hk[p], hi[p], kv, i)) break;
        hk[pos] = hk[p];
        hi[pos] = hi[p];
        pos = p;
    }
    hk[pos] = kv;
    hi[pos] = i;
    return size + 1;
}

static ATTR int64_t DK(merge)(KT *hk, int64_t *hi, int64_t size, int64_t k, const KT *sk,
                              const int64_t *si, int64_t n) {
    for (int64_t j = 0; j < n; j++) {
        if (size < k) size = DK(push)(hk, hi, size, sk[j], si[j]);
        else if (DK(better)(sk[j], si[j], hk[0], hi[0]))
            DK(sift_down)(hk, hi, size, 0, sk[j], si[j]);
    }
    return size;
}

static ATTR void DK(sort)(KT *hk, int64_t *hi, int64_t size) {
    for (int64_t s = size - 1; s > 0; s--) {
        KT kv = hk[s];
        int64_t i = hi[s];
        hk[s] = hk[0];
        hi[s] = hi[0];
        DK(sift_down)(hk, hi, s, 0, kv, i);
    }
}

/* The exact scan from element i on (the scan twin; also the SIMD scans' head
 * and tail).  Indices are increasing, so v == root never enters; a NaN root
 * ends the scan.  Candidates are x[i] or, with has_add, (T)((T)(x[i] - sub) + add). */
static inline ATTR int64_t DK(scan_from)(KT *hk, int64_t *hi, int64_t size, int64_t k,
                                         const T *x, int64_t i, int64_t n, T sub, T add,
                                         int has_add, int64_t base) {
    for (; i < n && size < k; i++) {
        T v = has_add ? (T)((T)(x[i] - sub) + add) : x[i];
        size = DK(push)(hk, hi, size, DK(key)(v), base + i);
    }
    if (i >= n) return size;
    T thr = DK(unkey)(hk[0]);
    if (thr != thr) return size;
    for (; i < n; i++) {
        T v = has_add ? (T)((T)(x[i] - sub) + add) : x[i];
        if (!(v <= thr)) {
            DK(sift_down)(hk, hi, size, 0, DK(key)(v), base + i);
            thr = DK(unkey)(hk[0]);
            if (thr != thr) return size;
        }
    }
    return size;
}

static ATTR int64_t DK(scan)(KT *hk, int64_t *hi, int64_t size, int64_t k, const T *x,
                             int64_t n, int64_t base) {
    return DK(scan_from)(hk, hi, size, k, x, 0, n, 0, 0, 0, base);
}

static ATTR int64_t DK(scan_add)(KT *hk, int64_t *hi, int64_t size, int64_t k, const T *x,
                                 int64_t n, T sub, T add, int64_t base) {
    return DK(scan_from)(hk, hi, size, k, x, 0, n, sub, add, 1, base);
}

/* ------------------------------------------------------------- statistics */

/* The max and the NaN/+inf check are done; sets the results that need no
 * sum and returns 0 when the sum must be skipped. */
static inline ATTR int DK(stats_pre)(T mx, int nan, double *pm, double *ps, int *pbad) {
    *pm = (double)mx;
    *ps = 0.0;
    *pbad = 0;
    if (nan || mx == (T)INFINITY) {
        *pbad = 1;
        return 0;
    }
    return mx != -(T)INFINITY;
}

/* Lane layout of the sums, which every build reproduces: per block of
 * DK_LANES * DK_PART elements, lane l (< DK_LANES) takes the exps of elements
 * l + DK_LANES * j (j < DK_PART), adds them in T pairwise, neighbours first
 * (float32, DK_PART = 4: (e0 + e1) + (e2 + e3), an error of about 1 ulp like
 * the exp itself), and accumulates that in float64 lane l.  The tail (less
 * than a block) goes to lanes 0, 1, ... in turn, one element each, cycling;
 * the lanes are summed 0..DK_LANES-1 at the end.  float64: DK_PART = 1. */
static inline ATTR double DK(lanes_sum)(const double *acc) {
    double s = 0.0;
    for (int l = 0; l < DK_LANES; l++) s += acc[l];
    return s;
}

/* the tail of the layout above, from element i on */
static inline ATTR void DK(sum_tail)(const T *x, int64_t i, int64_t n, T mx, double *acc) {
    for (int l = 0; i < n; i++, l = (l + 1) % DK_LANES) acc[l] += (double)DK_EXP_CORE(x[i] - mx);
}

static ATTR void DK(stats)(const T *x, int64_t n, double *pm, double *ps, int *pbad) {
    T mx = -(T)INFINITY;
    int nan = 0;
    for (int64_t i = 0; i < n; i++) {
        T v = x[i];
        if (v != v) nan = 1;
        else if (v > mx) mx = v;
    }
    if (!DK(stats_pre)(mx, nan, pm, ps, pbad)) return;
    double acc[DK_LANES] = {0};
    int64_t i = 0;
    for (; i + DK_LANES * DK_PART <= n; i += DK_LANES * DK_PART) {
        T e[DK_PART][DK_LANES];
        for (int j = 0; j < DK_PART; j++)
            for (int l = 0; l < DK_LANES; l++) e[j][l] = DK_EXP_CORE(x[i + DK_LANES * j + l] - mx);
        for (int w = DK_PART / 2; w >= 1; w /= 2)
            for (int j = 0; j < w; j++)
                for (int l = 0; l < DK_LANES; l++) e[j][l] = e[2 * j][l] + e[2 * j + 1][l];
        for (int l = 0; l < DK_LANES; l++) acc[l] += (double)e[0][l];
    }
    DK(sum_tail)(x, i, n, mx, acc);
    *ps = DK(lanes_sum)(acc);
}

/* ------------------------------------------------------------ elementwise */

/* y = (x - m) - l; through a lane buffer so that y == x (in place) still
 * vectorizes */
static ATTR void DK(sub)(const T *x, T *y, int64_t n, T m, T l) {
    int64_t i = 0;
    for (; i + DK_LANES <= n; i += DK_LANES) {
        T t[DK_LANES];
        for (int j = 0; j < DK_LANES; j++) t[j] = (x[i + j] - m) - l;
        for (int j = 0; j < DK_LANES; j++) y[i + j] = t[j];
    }
    for (; i < n; i++) y[i] = (x[i] - m) - l;
}

static ATTR void DK(exp)(const T *x, T *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = DK_EXP(x[i]);
}

#undef DK_BITS
#undef DK_TOP
