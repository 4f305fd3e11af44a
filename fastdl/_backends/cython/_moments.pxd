# Declarations of src/moments.h, shared by the kernel modules.
from libc.stdint cimport int64_t, uint16_t

cdef extern from "moments.h" nogil:
    const int64_t FDL_BLOCK_BYTES
    void fdl_chan(double *n, double *m, double *q, double nb, double mb, double qb)
    void fdl_moments_blocks_f32(const float *x, int64_t n, int64_t block, int level,
                                double *mean, double *m2)
    void fdl_moments_blocks_f64(const double *x, int64_t n, int64_t block, int level,
                                double *mean, double *m2)
    void fdl_colmoments_f32(const float *x, int64_t rows, int64_t C, int64_t S, int level,
                            float *work, double *mean, double *m2)
    void fdl_colmoments_f64(const double *x, int64_t rows, int64_t C, int64_t S, int level,
                            double *work, double *mean, double *m2)
    void fdl_moments_blocks_f16(const uint16_t *x, int64_t n, int64_t block, int level,
                                double *mean, double *m2)
    void fdl_colmoments_f16(const uint16_t *x, int64_t rows, int64_t C, int64_t S, int level,
                            float *work, double *mean, double *m2)
