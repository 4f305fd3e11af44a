/* Decoding kernels: the scalar build (the twins), the table choice and the
 * folding of chunk statistics (see decodek.h).  The SIMD builds are
 * decodek_avx2.c and decodek_avx512.c. */
#include "decodek_isa.h"
#include "decodek_exp.h"
#include "f16.h"

#include <math.h>
#include <string.h>

#define ATTR
#define DK_ISA scalar
#include "decodek_types.h"

static const fdl_dk_f32 f32_scalar = {
    scan_f32_scalar, scan_add_f32_scalar, merge_f32_scalar, sort_f32_scalar,
    stats_f32_scalar, sub_f32_scalar, exp_f32_scalar,
};
static const fdl_dk_f64 f64_scalar = {
    scan_f64_scalar, scan_add_f64_scalar, merge_f64_scalar, sort_f64_scalar,
    stats_f64_scalar, sub_f64_scalar, exp_f64_scalar,
};

#define DK16_F32 f32_scalar
#define DK16_H2F fdl_h2f_scalar
#define DK16_F2H fdl_f2h_scalar
#include "decodek_f16.h"

static const fdl_dk_f16 f16_scalar = {
    scan_f16_scalar, scan_add_f16_scalar, merge_f32_scalar, sort_f32_scalar,
    stats_f16_scalar, sub_f16_scalar, fdl_h2f_scalar, fdl_f2h_scalar,
};

const fdl_dk_f32 *fdl_dk_f32_table(int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX512) return &fdl_dk_f32_avx512;
    if (level >= FDL_SIMD_AVX2) return &fdl_dk_f32_avx2;
#endif
    (void)level;
    return &f32_scalar;
}

const fdl_dk_f64 *fdl_dk_f64_table(int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX512) return &fdl_dk_f64_avx512;
    if (level >= FDL_SIMD_AVX2) return &fdl_dk_f64_avx2;
#endif
    (void)level;
    return &f64_scalar;
}

const fdl_dk_f16 *fdl_dk_f16_table(int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX512) return &fdl_dk_f16_avx512;
    if (level >= FDL_SIMD_AVX2) return &fdl_dk_f16_avx2;
#endif
    (void)level;
    return &f16_scalar;
}

/* ---------------------------------------------------------------- folding */

/* the running sum is rescaled when the maximum grows */
void fdl_dk_fold_step(double *M, double *S, int *bad, double m, double s, int b) {
    if (b) {
        *bad = 1;
        return;
    }
    if (*bad || m == -INFINITY) return;
    if (m > *M) {
        *S = (*M == -INFINITY ? 0.0 : *S * exp(*M - m)) + s;
        *M = m;
    } else {
        *S += (m == *M) ? s : s * exp(m - *M);
    }
}

double fdl_dk_fold_end(double M, double S, int bad, double *pm) {
    if (bad) {
        *pm = NAN;
        return NAN;
    }
    *pm = M;
    if (M == -INFINITY) return NAN;
    return log(S);
}

double fdl_dk_fold(const double *m, const double *s, const int *bad, int64_t nch,
                   double *pm) {
    double M = -INFINITY, S = 0.0;
    int b = 0;
    for (int64_t c = 0; c < nch; c++) fdl_dk_fold_step(&M, &S, &b, m[c], s[c], bad[c]);
    return fdl_dk_fold_end(M, S, b, pm);
}
