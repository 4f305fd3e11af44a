/* Moments kernels written once over T, included by moments.c once per
 * (dtype, ISA).  Expects T, NL (lanes: 32 float, 16 double), MOM_REDUCE (the
 * lane tree of moments_simd.h for NL lanes of T), ATTR (target attribute or
 * empty) and MOM(name) (suffixes the name).  Plain loops over fixed lane
 * arrays: the compiler vectorizes them for ATTR while every rounding keeps
 * the order written here (fp-contract is off, no fast-math), so each ISA's
 * build, and each intrinsic override of these functions, agree bitwise. */

/* Two passes over one block of n > 0 elements (float32: each lane adds ~100
 * terms in float; lanes are combined in double).  Pass 2 works on d = x - K
 * with K the pass-1 mean in T, exact for x near K. */
static ATTR void MOM(one)(const T *restrict x, int64_t n, double *mean, double *m2) {
    T acc[NL] = {0}, sq[NL] = {0}, dv[NL] = {0};
    int64_t i = 0, nv = n & ~(int64_t)(NL - 1);
    for (; i < nv; i += NL)
        for (int k = 0; k < NL; k++) acc[k] += x[i + k];
    for (; i < n; i++) acc[i & (NL - 1)] += x[i];
    T K = (T)(MOM_REDUCE(acc) / (double)n);
    for (i = 0; i < nv; i += NL)
        for (int k = 0; k < NL; k++) {
            T d = x[i + k] - K;
            sq[k] += d * d;
            dv[k] += d;
        }
    for (; i < n; i++) {
        T d = x[i] - K;
        sq[i & (NL - 1)] += d * d;
        dv[i & (NL - 1)] += d;
    }
    double s1 = MOM_REDUCE(dv);
    *mean = fdl_mom_shifted_mean((double)K, s1, n);
    fdl_mom_finish(MOM_REDUCE(sq), s1, n, m2);
}

static ATTR void MOM(blocks)(const T *restrict x, int64_t n, int64_t block, double *mean,
                             double *m2) {
    for (int64_t b = 0; b * block < n; b++) {
        int64_t ln = n - b * block < block ? n - b * block : block;
        MOM(one)(x + b * block, ln, &mean[b], &m2[b]);
    }
}

/* ---- column passes: batch statistics over a short spatial extent ----
 * Each column adds its rows in order in T.  colsum runs row-major (the chunk
 * streams in memory order into column accumulators in L1); rows are often a
 * page or more apart, where hardware prefetchers stop, so it prefetches
 * COL_PF_BYTES ahead. */
#define COL_PF_BYTES 8192

static ATTR void MOM(colsum)(const T *restrict x, int64_t rows, int64_t L, T *restrict col) {
    for (int64_t r = 0; r < rows; r++) {
        const char *ahead = (const char *)(x + r * L) + COL_PF_BYTES;
        for (int64_t b = 0; b < L * (int64_t)sizeof(T); b += 64)
            __builtin_prefetch(ahead + b, 0, 3);
        for (int64_t j = 0; j < L; j++) col[j] += x[r * L + j];
    }
}

static ATTR void MOM(coldev)(const T *restrict x, int64_t rows, int64_t L, const T *restrict kc,
                             T *restrict sq, T *restrict dv) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < L; j++) {
            T d = x[r * L + j] - kc[j];
            sq[j] += d * d;
            dv[j] += d;
        }
}

/* coldev on strips of NL columns whose sums stay in registers over all rows
 * (the chunk is in L2: no load and store of two accumulators per element). */
static ATTR void MOM(coldev_strip)(const T *restrict x, int64_t rows, int64_t L,
                                   const T *restrict kc, T *restrict sq, T *restrict dv) {
    int64_t j = 0;
    for (; j + NL <= L; j += NL) {
        T s[NL], c[NL], k4[NL];
        for (int k = 0; k < NL; k++) {
            s[k] = sq[j + k];
            c[k] = dv[j + k];
            k4[k] = kc[j + k];
        }
        for (int64_t r = 0; r < rows; r++)
            for (int k = 0; k < NL; k++) {
                T d = x[r * L + j + k] - k4[k];
                s[k] += d * d;
                c[k] += d;
            }
        for (int k = 0; k < NL; k++) {
            sq[j + k] = s[k];
            dv[j + k] = c[k];
        }
    }
    for (; j < L; j++) {
        T s = sq[j], c = dv[j];
        for (int64_t r = 0; r < rows; r++) {
            T d = x[r * L + j] - kc[j];
            s += d * d;
            c += d;
        }
        sq[j] = s;
        dv[j] = c;
    }
}
#undef COL_PF_BYTES
