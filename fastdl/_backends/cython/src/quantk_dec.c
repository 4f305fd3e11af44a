/* Decoding: storage rows -> float32 values s*unit (exactly what dequantize
 * returns), for dequantize, the n >= 2 GEMV and the BLAS panels. */
#include "quantk_int.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define DQ_JS 16
#define DQ_R 256

/* scalar twin of every dec_range */
void fdl_qk_dec_range_scalar(const fdl_qk_desc *q, int64_t j, int64_t r0, int64_t r1, float *dst) {
    const uint8_t *row = q->data + j * q->rowb;
    int64_t bprev = -1;
    float s = 0.0f;
    qk_bcur bc = qk_bcur_init(q, r0);
    for (int64_t r = r0; r < r1; r++) {
        int64_t b = qk_bcur_at(&bc, r);
        if (b != bprev) { s = qk_scale(q, j, b); bprev = b; }
        dst[r - r0] = s * qk_unit(q, row, r);
    }
}

/* a row range of storage row j as doubles (exact casts of the float32 values) */
static void dec_range_f64(const fdl_qk_kernels *K, const fdl_qk_desc *q, int64_t j, int64_t r0,
                          int64_t r1, double *dst) {
    float tmp[512];
    for (int64_t a = r0; a < r1; a += 512) {
        int64_t e = a + 512 < r1 ? a + 512 : r1;
        K->dec_range(q, j, a, e, tmp);
        for (int64_t r = a; r < e; r++) dst[r - r0] = (double)tmp[r - a];
    }
}

void fdl_qk_decode_row(const fdl_qk_kernels *K, const fdl_qk_desc *q, int64_t j, void *dst,
                       int f64) {
    if (f64) dec_range_f64(K, q, j, 0, q->d_in, (double *)dst);
    else K->dec_range(q, j, 0, q->d_in, (float *)dst);
}

int64_t fdl_qk_dequantize_strips(const fdl_qk_desc *q) { return (q->d_out + DQ_JS - 1) / DQ_JS; }

/* strip s: DQ_JS storage rows decoded DQ_R values at a time into a small buffer,
 * written transposed into out (d_in, d_out) */
void fdl_qk_dequantize_strip(const fdl_qk_kernels *K, const fdl_qk_desc *q, int64_t s, void *out,
                             int f64) {
    int64_t d_in = q->d_in, d_out = q->d_out;
    float buf[DQ_JS * DQ_R];
    int64_t j0 = s * DQ_JS, jw = d_out - j0 < DQ_JS ? d_out - j0 : DQ_JS;
    for (int64_t r0 = 0; r0 < d_in; r0 += DQ_R) {
        int64_t r1 = r0 + DQ_R < d_in ? r0 + DQ_R : d_in;
        for (int64_t jj = 0; jj < jw; jj++) K->dec_range(q, j0 + jj, r0, r1, buf + jj * DQ_R);
        if (f64) {
            double *o = (double *)out;
            for (int64_t r = r0; r < r1; r++)
                for (int64_t jj = 0; jj < jw; jj++)
                    o[r * d_out + j0 + jj] = (double)buf[jj * DQ_R + r - r0];
        } else {
            float *o = (float *)out;
            for (int64_t r = r0; r < r1; r++)
                for (int64_t jj = 0; jj < jw; jj++)
                    o[r * d_out + j0 + jj] = buf[jj * DQ_R + r - r0];
        }
    }
}

int fdl_qk_release_team(void) {
#if defined(_OPENMP) && defined(FASTDL_OMP_PAUSE)
    return omp_pause_resource_all(omp_pause_soft);
#else
    return -1;
#endif
}
