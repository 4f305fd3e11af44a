/* Moments kernels: the body compiled once per (dtype, ISA), one table per
 * (dtype, ISA), and the drivers (see moments.h). */
#include "moments.h"

#include <math.h>

#include "f16.h"
#include "moments_simd.h"
#include "simd.h"

#define MOM_CAT(a, b, c) a##_##b##_##c
#define MOM_XCAT(a, b, c) MOM_CAT(a, b, c)
#define MOM(name) MOM_XCAT(name, MOM_SFX, MOM_ISA)

/* the body for float (32 lanes) and double (16 lanes) at the current ATTR/MOM_ISA */
#define ATTR
#define MOM_ISA scalar
#include "moments_types.h"
#undef ATTR
#undef MOM_ISA

#if FDL_HAVE_AVX2_TARGET
#define ATTR FDL_TARGET_AVX2
#define MOM_ISA avx2
#include "moments_types.h"
#undef ATTR
#undef MOM_ISA

#define ATTR FDL_TARGET_AVX512
#define MOM_ISA avx512
#include "moments_types.h"
#undef ATTR
#undef MOM_ISA
#endif

static const fdl_moments_f32 f32_scalar = {
    .blocks = blocks_f32_scalar, .colsum = colsum_f32_scalar, .coldev = coldev_f32_scalar,
    .coldev_strip = coldev_strip_f32_scalar, .h2f = fdl_h2f_scalar, .f2h = fdl_f2h_scalar,
};
static const fdl_moments_f64 f64_scalar = {
    .blocks = blocks_f64_scalar, .colsum = colsum_f64_scalar, .coldev = coldev_f64_scalar,
    .coldev_strip = coldev_strip_f64_scalar,
};
#if FDL_HAVE_AVX2_TARGET
static const fdl_moments_f32 f32_avx2 = {
    .blocks = fdl_mom_blocks_f32_avx2, .colsum = colsum_f32_avx2, .coldev = coldev_f32_avx2,
    .coldev_strip = fdl_mom_coldev_strip_f32_avx2, .h2f = fdl_h2f_avx2, .f2h = fdl_f2h_avx2,
};
static const fdl_moments_f64 f64_avx2 = {
    .blocks = fdl_mom_blocks_f64_avx2, .colsum = colsum_f64_avx2, .coldev = coldev_f64_avx2,
    .coldev_strip = fdl_mom_coldev_strip_f64_avx2,
};
static const fdl_moments_f32 f32_avx512 = {
    .blocks = fdl_mom_blocks_f32_avx512, .colsum = colsum_f32_avx512,
    .coldev = coldev_f32_avx512, .coldev_strip = fdl_mom_coldev_strip_f32_avx512,
    .h2f = fdl_mom_h2f_avx512, .f2h = fdl_mom_f2h_avx512,
};
static const fdl_moments_f64 f64_avx512 = {
    .blocks = fdl_mom_blocks_f64_avx512, .colsum = colsum_f64_avx512,
    .coldev = coldev_f64_avx512, .coldev_strip = fdl_mom_coldev_strip_f64_avx512,
};
#endif

const fdl_moments_f32 *fdl_moments_f32_table(int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX512) return &f32_avx512;
    if (level >= FDL_SIMD_AVX2) return &f32_avx2;
#endif
    (void)level;
    return &f32_scalar;
}

const fdl_moments_f64 *fdl_moments_f64_table(int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX512) return &f64_avx512;
    if (level >= FDL_SIMD_AVX2) return &f64_avx2;
#endif
    (void)level;
    return &f64_scalar;
}

/* ---- drivers ---- */

/* Segments are often a page or less, far apart: hardware prefetchers stop
 * at page boundaries, so the next segment is requested while this one is
 * summed (up to SEG_PF_BYTES of it). */
#define SEG_PF_BYTES 16384
void fdl_prefetch(const void *p, int64_t nbytes) {
    const char *c = (const char *)p;
    if (nbytes > SEG_PF_BYTES) nbytes = SEG_PF_BYTES;
    for (int64_t i = 0; i < nbytes; i += 64) __builtin_prefetch(c + i);
}

int64_t fdl_seg_moments_work(int64_t nseg, int64_t len, int64_t itemsize) {
    int64_t blk = FDL_BLOCK_BYTES / itemsize;
    return 3 * nseg * ((len + blk - 1) / blk);
}

#define T float
#define MT fdl_moments_f32
#define DRV(name) fdl_##name##_f32
#include "moments_driver.h"
#undef T
#undef MT
#undef DRV
#define T double
#define MT fdl_moments_f64
#define DRV(name) fdl_##name##_f64
#include "moments_driver.h"
#undef T
#undef MT
#undef DRV

/* ---- float16 ---- */

#define F16_BLOCK (FDL_BLOCK_BYTES / 4)

void fdl_moments_blocks_f16(const fdl_moments_f32 *M, const uint16_t *x, int64_t n,
                            int64_t block, double *mean, double *m2) {
    float xs[F16_BLOCK] __attribute__((aligned(64)));
    for (int64_t b = 0; b * block < n; b++) {
        int64_t ln = n - b * block < block ? n - b * block : block;
        M->h2f(x + b * block, xs, ln);
        M->blocks(xs, ln, ln, &mean[b], &m2[b]);
    }
}

/* The column passes of fdl_colmoments_f32 on float16 rows converted a chunk
 * at a time; each column adds its rows in the same order as there, so the
 * sums are bitwise the float32 ones. */
void fdl_colmoments_f16(const fdl_moments_f32 *M, const uint16_t *x, int64_t rows, int64_t C,
                        int64_t S, float *work, double *mean, double *m2) {
    float xs[F16_BLOCK] __attribute__((aligned(64)));
    int64_t L = C * S;
    float *col = work, *kc = work + L, *sq = work + 2 * L, *dv = work + 3 * L;
    for (int64_t j = 0; j < L; j++) col[j] = sq[j] = dv[j] = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j0 = 0; j0 < L; j0 += F16_BLOCK) {
            int64_t m = L - j0 < F16_BLOCK ? L - j0 : F16_BLOCK;
            M->h2f(x + r * L + j0, xs, m);
            M->colsum(xs, 1, m, col + j0);
        }
    fdl_col_centers_f32(col, C, S, 1.0 / (double)(rows * S), kc);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j0 = 0; j0 < L; j0 += F16_BLOCK) {
            int64_t m = L - j0 < F16_BLOCK ? L - j0 : F16_BLOCK;
            M->h2f(x + r * L + j0, xs, m);
            M->coldev(xs, 1, m, kc + j0, sq + j0, dv + j0);
        }
    fdl_col_finish_f32(sq, dv, kc, C, S, rows, 1.0 / (double)(rows * S), mean, m2);
}
