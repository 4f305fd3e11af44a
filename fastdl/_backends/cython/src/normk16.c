/* float16 normalization kernels (see normk16.h): chunks converted into L1
 * scratch, the float32 kernels of normk.c on the chunk, the output converted
 * back.  Every chunk boundary is a multiple of NK_FLUSH, so each float32
 * reduction called on a chunk returns exactly its part of the whole row's
 * sum, and adding the parts in order gives the row's sum bitwise. */
#include "normk16.h"

#include <math.h>

#include "simd.h"

#define CH FDL_NK16_CHUNK
#define BLK (FDL_BLOCK_BYTES / 4)   /* float32 moments block: rows up to BLK are one block */
#define MIN(a, b) ((a) < (b) ? (a) : (b))
/* Passes go SUB elements at a time: the scratch of a chunk and its output
 * stay a small part of L1 beside the streams. */
#define SUB 1024
#define SCRATCH(name) float name[CH] __attribute__((aligned(64)))

_Static_assert(SUB == NK_FLUSH && CH % SUB == 0 && CH == BLK,
               "a chunk is one flush run; a whole-row scratch is one moments block");

/* ---- the one chunk loop ----
 * run() calls fn on chunks [j0, j0 + m) of a row of n, with the float32
 * values of x and dy (either may be NULL: not read) and an output chunk that
 * is converted to y (unless y is NULL).  Where the float32 values come from:
 * CONVERT: converted into the start of xs / ds (chunk scratch);
 * FILL:    converted into xs / ds at j0 (the row fits: later passes reuse it);
 * CACHED:  already at xs / ds + j0. */
enum { CONVERT, FILL, CACHED };
typedef void (*chunk_fn)(void *arg, const fdl_nk_f32 *K, const float *x, const float *dy,
                         float *out, int64_t j0, int64_t m);

static inline const float *load(const fdl_nk16 *T, const uint16_t *h, float *buf, int64_t j0,
                                int64_t m, int mode) {
    if (!h) return 0;
    if (mode == CACHED) return buf + j0;
    float *d = mode == FILL ? buf + j0 : buf;
    T->mom->h2f(h + j0, d, m);
    return d;
}

static void run(const fdl_nk16 *T, int64_t n, const uint16_t *x, float *xs, const uint16_t *dy,
                float *ds, int mode, uint16_t *y, chunk_fn fn, void *arg) {
    float os[SUB] __attribute__((aligned(64)));
    for (int64_t j0 = 0; j0 < n; j0 += SUB) {
        int64_t m = MIN(SUB, n - j0);
        const float *xc = load(T, x, xs, j0, m, mode), *dc = load(T, dy, ds, j0, m, mode);
        fn(arg, T->nk, xc, dc, os, j0, m);
        if (y) T->mom->f2h(os, y + j0, m);
    }
}

/* first / second pass over a row of n held in scratch of CH elements */
static inline int first(int64_t n) { return n <= CH ? FILL : CONVERT; }
static inline int again(int64_t n) { return n <= CH ? CACHED : CONVERT; }

/* Mean and M2 of a row of n, as fdl_rows_moments_f32 gives them for the
 * float32 row; when n <= CH, xs holds the converted row afterwards. */
static void row_moments(const fdl_nk16 *T, const uint16_t *x, int64_t n, float *xs,
                        double *mean, double *m2) {
    double tn = 0, tm = 0, tq = 0;
    double cnt[FDL_ROW_RUN], mu[FDL_ROW_RUN], q[FDL_ROW_RUN];
    if (n <= BLK) {
        T->mom->h2f(x, xs, n);
        T->mom->blocks(xs, n, n, mean, m2);
        return;
    }
    for (int64_t off = 0; off < n; off += FDL_ROW_RUN * BLK) {
        int64_t len = MIN(n - off, FDL_ROW_RUN * BLK), nb = (len + BLK - 1) / BLK;
        for (int64_t b = 0; b < nb; b++) {
            int64_t lb = MIN(BLK, len - b * BLK);
            T->mom->h2f(x + off + b * BLK, xs, lb);
            T->mom->blocks(xs, lb, lb, &mu[b], &q[b]);
            cnt[b] = (double)lb;
        }
        fdl_merge_tree(cnt, mu, q, nb);
        fdl_chan(&tn, &tm, &tq, cnt[0], mu[0], q[0]);
    }
    *mean = tm;
    *m2 = tq;
}

/* ---- per-chunk steps: arguments and the float32 kernel on the chunk ---- */

typedef struct { float mh, ml, r, a, c, wk, c1, c2; const float *w, *b; } scal_args;
typedef struct { const float *mh, *ml, *r, *w, *c1, *c2, *a, *c; float *ap, *bp; } col_args;
typedef struct { float mh, ml, r; const float *w; float *dwp, *dbp; double s1, s2; } sum_args;

static void apply_row(void *p, const fdl_nk_f32 *K, const float *x, const float *dy, float *o,
                      int64_t j0, int64_t m) {
    const scal_args *a = p;
    (void)dy;
    K->apply_row(x, o, m, a->mh, a->ml, a->r, a->w + j0, a->b + j0, 0);
}

static void apply_rms(void *p, const fdl_nk_f32 *K, const float *x, const float *dy, float *o,
                      int64_t j0, int64_t m) {
    const scal_args *a = p;
    (void)dy;
    K->apply_rms(x, o, m, a->r, a->w + j0, 0);
}

static void apply_chan(void *p, const fdl_nk_f32 *K, const float *x, const float *dy, float *o,
                       int64_t j0, int64_t m) {
    const scal_args *a = p;
    (void)dy, (void)j0;
    K->apply_chan(x, o, m, a->mh, a->ml, a->a, a->c, 0);
}

static void apply_cols(void *p, const fdl_nk_f32 *K, const float *x, const float *dy, float *o,
                       int64_t j0, int64_t m) {
    const col_args *a = p;
    (void)dy;
    K->apply_cols(x, o, m, a->mh + j0, a->ml + j0, a->a + j0, a->c + j0, 0);
}

static void sumsq(void *p, const fdl_nk_f32 *K, const float *x, const float *dy, float *o,
                  int64_t j0, int64_t m) {
    (void)dy, (void)o, (void)j0;
    ((sum_args *)p)->s2 += K->sumsq(x, m);     /* m <= SUB = NK_FLUSH: one flush run */
}

static void row_sums(void *p, const fdl_nk_f32 *K, const float *x, const float *dy, float *o,
                     int64_t j0, int64_t m) {
    sum_args *a = p;
    double t1, t2;
    (void)o;
    K->row_sums(dy, x, m, a->mh, a->ml, a->r, a->w + j0, a->dwp + j0, a->dbp + j0, &t1, &t2);
    a->s1 += t1;
    a->s2 += t2;
}

static void row_dx(void *p, const fdl_nk_f32 *K, const float *x, const float *dy, float *o,
                   int64_t j0, int64_t m) {
    const scal_args *a = p;
    K->row_dx(dy, x, o, m, a->mh, a->ml, a->r, a->w + j0, a->c1, a->c2);
}

static void rms_sums(void *p, const fdl_nk_f32 *K, const float *x, const float *dy, float *o,
                     int64_t j0, int64_t m) {
    sum_args *a = p;
    (void)o;
    a->s2 += K->rms_sums(dy, x, m, a->r, a->w + j0, a->dwp + j0);
}

static void rms_dx(void *p, const fdl_nk_f32 *K, const float *x, const float *dy, float *o,
                   int64_t j0, int64_t m) {
    const scal_args *a = p;
    K->rms_dx(dy, x, o, m, a->r, a->w + j0, a->c2);
}

/* seg_sums accumulates into s1 (A) and s2 (B) */
static void seg_sums(void *p, const fdl_nk_f32 *K, const float *x, const float *dy, float *o,
                     int64_t j0, int64_t m) {
    sum_args *a = p;
    (void)o, (void)j0;
    K->seg_sums(dy, x, m, a->mh, a->ml, a->r, &a->s1, &a->s2);
}

static void seg_dx(void *p, const fdl_nk_f32 *K, const float *x, const float *dy, float *o,
                   int64_t j0, int64_t m) {
    const scal_args *a = p;
    (void)j0;
    if (x)
        K->seg_dx(dy, x, o, m, a->mh, a->ml, a->r, a->wk, a->c1, a->c2);
    else
        K->seg_scale(dy, o, m, a->wk, a->r);
}

static void col_sums(void *p, const fdl_nk_f32 *K, const float *x, const float *dy, float *o,
                     int64_t j0, int64_t m) {
    const col_args *a = p;
    (void)o;
    K->col_sums(dy, x, m, a->mh + j0, a->ml + j0, a->r + j0, a->ap + j0, a->bp + j0);
}

static void col_dx(void *p, const fdl_nk_f32 *K, const float *x, const float *dy, float *o,
                   int64_t j0, int64_t m) {
    const col_args *a = p;
    if (x)
        K->col_dx(dy, x, o, m, a->mh + j0, a->ml + j0, a->r + j0, a->w + j0, a->c1 + j0,
                  a->c2 + j0);
    else
        K->col_scale(dy, o, m, a->w + j0, a->r + j0);
}

/* the float64 mean as head + rest in float32 (the kernels' mh, ml) */
static inline void split(double mu, float *mh, float *ml) {
    *mh = (float)mu;
    *ml = (float)(mu - (double)*mh);
}

/* ---- forward ---- */

void fdl_nk16_layer_row(const fdl_nk16 *T, const uint16_t *x, uint16_t *y, int64_t D,
                        const float *w, const float *b, double eps, double *mean, double *var) {
    SCRATCH(xs);
    double mu, q;
    row_moments(T, x, D, xs, &mu, &q);
    double v = q / (double)D;
    *mean = mu;
    *var = v;
    scal_args a = {.r = (float)(1.0 / sqrt(v + eps)), .w = w, .b = b};
    split(mu, &a.mh, &a.ml);
    run(T, D, x, xs, 0, 0, again(D), y, apply_row, &a);
}

void fdl_nk16_rms_row(const fdl_nk16 *T, const uint16_t *x, uint16_t *y, int64_t D,
                      const float *w, double eps, double *ms) {
    SCRATCH(xs);
    sum_args t = {.s2 = 0.0};
    run(T, D, x, xs, 0, 0, first(D), 0, sumsq, &t);
    double s = t.s2 / (double)D;
    *ms = s;
    scal_args a = {.r = (float)(1.0 / sqrt(s + eps)), .w = w};
    run(T, D, x, xs, 0, 0, again(D), y, apply_rms, &a);
}

void fdl_nk16_apply_chan(const fdl_nk16 *T, const uint16_t *x, uint16_t *y, int64_t n,
                         float mh, float ml, float a, float c) {
    float xs[SUB] __attribute__((aligned(64)));
    scal_args s = {.mh = mh, .ml = ml, .a = a, .c = c};
    run(T, n, x, xs, 0, 0, CONVERT, y, apply_chan, &s);
}

void fdl_nk16_group_row(const fdl_nk16 *T, const uint16_t *x, uint16_t *y, int64_t Kc,
                        int64_t S, const float *w, const float *b, double eps, double *mean,
                        double *var) {
    SCRATCH(xs);
    int64_t M = Kc * S;
    double mu, q;
    row_moments(T, x, M, xs, &mu, &q);
    double v = q / (double)M, rs = 1.0 / sqrt(v + eps);
    *mean = mu;
    *var = v;
    scal_args a;
    split(mu, &a.mh, &a.ml);
    for (int64_t c = 0; c < Kc; c++) {
        a.a = (float)(rs * (double)w[c]);
        a.c = b[c];
        run(T, S, x + c * S, M <= CH ? xs + c * S : xs, 0, 0, again(M), y + c * S, apply_chan,
            &a);
    }
}

void fdl_nk16_apply_cols(const fdl_nk16 *T, const uint16_t *x, uint16_t *y, int64_t n,
                         const float *mh, const float *ml, const float *a, const float *c) {
    float xs[SUB] __attribute__((aligned(64)));
    col_args v = {.mh = mh, .ml = ml, .a = a, .c = c};
    run(T, n, x, xs, 0, 0, CONVERT, y, apply_cols, &v);
}

void fdl_nk16_seg_moments(const fdl_nk16 *T, const uint16_t *x, int64_t nseg, int64_t len,
                          int64_t stride, double *work, double *mean, double *m2) {
    int64_t nb = (len + BLK - 1) / BLK, k = nseg * nb;
    double *cnt = work, *mu = work + k, *q = work + 2 * k;
    for (int64_t s = 0; s < nseg; s++) {
        if (s + 1 < nseg) fdl_prefetch(x + (s + 1) * stride, len * 2);
        fdl_moments_blocks_f16(T->mom, x + s * stride, len, BLK, mu + s * nb, q + s * nb);
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

void fdl_nk16_layer_bwd_row(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x,
                            uint16_t *dx, int64_t D, double mean, double rstd, const float *w,
                            float *dwp, float *dbp) {
    SCRATCH(xs);
    SCRATCH(ds);
    sum_args t = {.r = (float)rstd, .w = w, .dwp = dwp, .dbp = dbp, .s1 = 0.0, .s2 = 0.0};
    split(mean, &t.mh, &t.ml);
    run(T, D, x, xs, dy, ds, first(D), 0, row_sums, &t);
    scal_args a = {.mh = t.mh, .ml = t.ml, .r = t.r, .w = w, .c1 = (float)(t.s1 / (double)D),
                   .c2 = (float)(t.s2 / (double)D)};
    run(T, D, x, xs, dy, ds, again(D), dx, row_dx, &a);
}

void fdl_nk16_rms_bwd_row(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x,
                          uint16_t *dx, int64_t D, double rstd, const float *w, float *dwp) {
    SCRATCH(xs);
    SCRATCH(ds);
    sum_args t = {.r = (float)rstd, .w = w, .dwp = dwp, .s2 = 0.0};
    run(T, D, x, xs, dy, ds, first(D), 0, rms_sums, &t);
    scal_args a = {.r = t.r, .w = w, .c2 = (float)(t.s2 / (double)D)};
    run(T, D, x, xs, dy, ds, again(D), dx, rms_dx, &a);
}

void fdl_nk16_seg_sums(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x, int64_t n,
                       float mh, float ml, float r, double *A, double *B) {
    float xs[SUB] __attribute__((aligned(64))), ds[SUB] __attribute__((aligned(64)));
    sum_args t = {.mh = mh, .ml = ml, .r = r, .s1 = *A, .s2 = *B};
    run(T, n, x, xs, dy, ds, CONVERT, 0, seg_sums, &t);
    *A = t.s1;
    *B = t.s2;
}

void fdl_nk16_seg_dx(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x, uint16_t *dx,
                     int64_t n, float mh, float ml, float r, float wk, float c1, float c2,
                     int training) {
    float xs[SUB] __attribute__((aligned(64))), ds[SUB] __attribute__((aligned(64)));
    scal_args a = {.mh = mh, .ml = ml, .r = r, .wk = wk, .c1 = c1, .c2 = c2};
    run(T, n, training ? x : 0, xs, dy, ds, CONVERT, dx, seg_dx, &a);
}

void fdl_nk16_group_bwd_row(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x,
                            uint16_t *dx, int64_t Kc, int64_t S, double mean, double rstd,
                            const float *w, double *A, double *B) {
    SCRATCH(xs);
    SCRATCH(ds);
    int64_t M = Kc * S;
    float mh, ml, rs = (float)rstd;
    double s1 = 0.0, s2 = 0.0;
    split(mean, &mh, &ml);
    if (M <= CH) {       /* the whole row converted once, used by both passes */
        T->mom->h2f(x, xs, M);
        T->mom->h2f(dy, ds, M);
    }
    for (int64_t c = 0; c < Kc; c++) {
        sum_args t = {.mh = mh, .ml = ml, .r = rs, .s1 = 0.0, .s2 = 0.0};
        int64_t o = M <= CH ? c * S : 0;
        run(T, S, x + c * S, xs + o, dy + c * S, ds + o, again(M), 0, seg_sums, &t);
        A[c] = t.s1;
        B[c] = t.s2;
        s1 = s1 + (double)w[c] * B[c];
        s2 = s2 + (double)w[c] * A[c];
    }
    scal_args a = {.mh = mh, .ml = ml, .r = rs, .c1 = (float)(s1 / (double)M),
                   .c2 = (float)(s2 / (double)M)};
    for (int64_t c = 0; c < Kc; c++) {
        int64_t o = M <= CH ? c * S : 0;
        a.wk = w[c];
        run(T, S, x + c * S, xs + o, dy + c * S, ds + o, again(M), dx + c * S, seg_dx, &a);
    }
}

void fdl_nk16_col_sums(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x, int64_t n,
                       const float *mh, const float *ml, const float *r, float *ap, float *bp) {
    float xs[SUB] __attribute__((aligned(64))), ds[SUB] __attribute__((aligned(64)));
    col_args v = {.mh = mh, .ml = ml, .r = r, .ap = ap, .bp = bp};
    run(T, n, x, xs, dy, ds, CONVERT, 0, col_sums, &v);
}

void fdl_nk16_col_dx(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x, uint16_t *dx,
                     int64_t n, const float *mh, const float *ml, const float *r,
                     const float *w, const float *c1, const float *c2, int training) {
    float xs[SUB] __attribute__((aligned(64))), ds[SUB] __attribute__((aligned(64)));
    col_args v = {.mh = mh, .ml = ml, .r = r, .w = w, .c1 = c1, .c2 = c2};
    run(T, n, training ? x : 0, xs, dy, ds, CONVERT, dx, col_dx, &v);
}
