#include "normk.h"
#include "moments.h"
#include "simd.h"

#define NK_CAT3(a, b, c) a##_##b##_##c
#define NK_XCAT3(a, b, c) NK_CAT3(a, b, c)
#define NK(name) NK_XCAT3(name, NK_SFX, NK_ISA)

/* baseline builds */
#define ATTR
#define NK_ISA scalar
#include "normk_types.h"
#undef ATTR
#undef NK_ISA

#if FDL_HAVE_AVX2_TARGET
#define ATTR FDL_TARGET_AVX2
#define NK_ISA avx2
#include "normk_types.h"
#undef ATTR
#undef NK_ISA
#endif

#define NK_TABLE(SFX, ISA)                                                          \
    { sumsq_##SFX##_##ISA, apply_row_##SFX##_##ISA, apply_rms_##SFX##_##ISA,        \
      apply_chan_##SFX##_##ISA, apply_cols_##SFX##_##ISA, row_sums_##SFX##_##ISA,   \
      row_dx_##SFX##_##ISA, rms_sums_##SFX##_##ISA, rms_dx_##SFX##_##ISA,           \
      seg_sums_##SFX##_##ISA, seg_dx_##SFX##_##ISA, col_sums_##SFX##_##ISA,         \
      col_dx_##SFX##_##ISA }

static const fdl_nk_f32 f32_scalar = NK_TABLE(f32, scalar);
static const fdl_nk_f64 f64_scalar = NK_TABLE(f64, scalar);
#if FDL_HAVE_AVX2_TARGET
static const fdl_nk_f32 f32_avx2 = NK_TABLE(f32, avx2);
static const fdl_nk_f64 f64_avx2 = NK_TABLE(f64, avx2);
#endif

const fdl_nk_f32 *fdl_nk_f32_table(int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX2) return &f32_avx2;
#endif
    (void)level;
    return &f32_scalar;
}

const fdl_nk_f64 *fdl_nk_f64_table(int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX2) return &f64_avx2;
#endif
    (void)level;
    return &f64_scalar;
}

/* ---- moments of long rows and of strided segments ---- */

#define BLOCK_BYTES 16384
#define ROW_RUN 64      /* blocks per call of fdl_moments_blocks (pipelined inside) */

/* Chan et al.: (n, m, q) of the union of two disjoint parts. */
static void chan(double *n, double *m, double *q, double nb, double mb, double qb) {
    if (nb == 0) return;
    if (*n == 0) { *n = nb; *m = mb; *q = qb; return; }
    double nn = *n + nb, d = mb - *m;
    *q = *q + qb + d * d * (*n * nb / nn);
    *m = *m + d * (nb / nn);
    *n = nn;
}

/* Merge k items in place, bottom-up pairwise; the result is item 0. */
static void merge_tree(double *cnt, double *mu, double *m2, int64_t k) {
    for (int64_t step = 1; step < k; step *= 2)
        for (int64_t j = 0; j + step < k; j += 2 * step)
            chan(&cnt[j], &mu[j], &m2[j], cnt[j + step], mu[j + step], m2[j + step]);
}

#define ROW_MOMENTS(SFX, T)                                                               \
void fdl_row_moments_##SFX(const T *x, int64_t n, int level, double *mean, double *m2) {  \
    const int64_t blk = BLOCK_BYTES / (int64_t)sizeof(T);                                 \
    double tn = 0, tm = 0, tq = 0;                                                        \
    double cnt[ROW_RUN], mu[ROW_RUN], q[ROW_RUN];                                         \
    for (int64_t off = 0; off < n; off += ROW_RUN * blk) {                                \
        int64_t len = n - off < ROW_RUN * blk ? n - off : ROW_RUN * blk;                  \
        int64_t nb = (len + blk - 1) / blk;                                               \
        fdl_moments_blocks_##SFX(x + off, len, blk, level, mu, q);                        \
        for (int64_t b = 0; b < nb; b++)                                                  \
            cnt[b] = (double)(len - b * blk < blk ? len - b * blk : blk);                 \
        merge_tree(cnt, mu, q, nb);                                                       \
        chan(&tn, &tm, &tq, cnt[0], mu[0], q[0]);                                         \
    }                                                                                     \
    *mean = tm;                                                                           \
    *m2 = tq;                                                                             \
}                                                                                         \
                                                                                          \
void fdl_seg_moments_##SFX(const T *x, int64_t nseg, int64_t len, int64_t stride,         \
                           int level, double *work, double *mean, double *m2) {           \
    const int64_t blk = BLOCK_BYTES / (int64_t)sizeof(T);                                 \
    int64_t nb = (len + blk - 1) / blk, k = nseg * nb;                                    \
    double *cnt = work, *mu = work + k, *q = work + 2 * k;                                \
    for (int64_t s = 0; s < nseg; s++) {                                                  \
        fdl_moments_blocks_##SFX(x + s * stride, len, blk, level, mu + s * nb,            \
                                 q + s * nb);                                             \
        for (int64_t b = 0; b < nb; b++)                                                  \
            cnt[s * nb + b] = (double)(len - b * blk < blk ? len - b * blk : blk);        \
    }                                                                                     \
    merge_tree(cnt, mu, q, k);                                                            \
    *mean = mu[0];                                                                        \
    *m2 = q[0];                                                                           \
}
ROW_MOMENTS(f32, float)
ROW_MOMENTS(f64, double)

int64_t fdl_seg_moments_work(int64_t nseg, int64_t len, int64_t itemsize) {
    int64_t blk = BLOCK_BYTES / itemsize;
    return 3 * nseg * ((len + blk - 1) / blk);
}
