/* The quantization kernels of each SIMD level: a level lists its overrides and
 * the level below's functions for the rest (quantize keeps its AVX2 tile at the
 * AVX-512 level: it is bound by the division and the memory stream). */
#include "quantk_int.h"

static const fdl_qk_kernels K_SCALAR = {
    fdl_qk_qz_tile_scalar,
    fdl_qk_dec_range_scalar,
    {fdl_qk_mv_fast_scalar, fdl_qk_mv_fast_scalar, fdl_qk_mv_fast_scalar},
    fdl_qk_mvv_scalar,
    fdl_qk_mt_rows_scalar,
};

#if FDL_HAVE_AVX2_TARGET
static const fdl_qk_kernels K_AVX2 = {
    fdl_qk_qz_tile_avx2,
    fdl_qk_dec_range_avx2,
    {fdl_qk_mv_i8_avx2, fdl_qk_mv_lin_avx2, fdl_qk_mv_nf4_avx2},
    fdl_qk_mvv_avx2,
    fdl_qk_mt_rows_avx2,
};

static const fdl_qk_kernels K_AVX512 = {
    fdl_qk_qz_tile_avx2,
    fdl_qk_dec_range_avx512,
    {fdl_qk_mv_i8_avx512, fdl_qk_mv_lin_avx512, fdl_qk_mv_nf4_avx512},
    fdl_qk_mvv_avx512,
    fdl_qk_mt_rows_avx512,
};
#endif

const fdl_qk_kernels *fdl_qk_table(int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX512) return &K_AVX512;
    if (level >= FDL_SIMD_AVX2) return &K_AVX2;
#endif
    (void)level;
    return &K_SCALAR;
}
