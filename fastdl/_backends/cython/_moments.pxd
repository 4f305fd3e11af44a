# Declarations of src/moments.h, shared by the kernel modules, and typed shims
# that pick the float32 / float64 table and driver (float16 data use the
# float32 table).
from libc.stdint cimport int64_t, uint16_t
from cython cimport floating

cdef extern from "moments.h" nogil:
    const int64_t FDL_BLOCK_BYTES
    ctypedef struct fdl_moments_f32:
        void (*blocks)(const float *x, int64_t n, int64_t block, double *mean,
                       double *m2) noexcept nogil
        void (*h2f)(const uint16_t *h, float *f, int64_t n) noexcept nogil
        void (*f2h)(const float *f, uint16_t *h, int64_t n) noexcept nogil
    ctypedef struct fdl_moments_f64:
        void (*blocks)(const double *x, int64_t n, int64_t block, double *mean,
                       double *m2) noexcept nogil
    const fdl_moments_f32 *fdl_moments_f32_table(int level)
    const fdl_moments_f64 *fdl_moments_f64_table(int level)
    void fdl_chan(double *n, double *m, double *q, double nb, double mb, double qb)
    void fdl_rows_moments_f32(const fdl_moments_f32 *M, const float *x, int64_t nrows,
                              int64_t D, double *mean, double *m2)
    void fdl_rows_moments_f64(const fdl_moments_f64 *M, const double *x, int64_t nrows,
                              int64_t D, double *mean, double *m2)
    void fdl_seg_moments_f32(const fdl_moments_f32 *M, const float *x, int64_t nseg,
                             int64_t len, int64_t stride, double *work, double *mean,
                             double *m2)
    void fdl_seg_moments_f64(const fdl_moments_f64 *M, const double *x, int64_t nseg,
                             int64_t len, int64_t stride, double *work, double *mean,
                             double *m2)
    int64_t fdl_seg_moments_work(int64_t nseg, int64_t len, int64_t itemsize)
    void fdl_colmoments_f32(const fdl_moments_f32 *M, const float *x, int64_t rows, int64_t C,
                            int64_t S, float *work, double *mean, double *m2)
    void fdl_colmoments_f64(const fdl_moments_f64 *M, const double *x, int64_t rows,
                            int64_t C, int64_t S, double *work, double *mean, double *m2)
    void fdl_moments_blocks_f16(const fdl_moments_f32 *M, const uint16_t *x, int64_t n,
                                int64_t block, double *mean, double *m2)
    void fdl_colmoments_f16(const fdl_moments_f32 *M, const uint16_t *x, int64_t rows,
                            int64_t C, int64_t S, float *work, double *mean, double *m2)

# The data a moments kernel reads: float32, float64, or float16 as its bits.
ctypedef fused data:
    float
    double
    uint16_t


cdef inline const void *mom_table(const data *tag, int level) noexcept nogil:
    """The moments table of ``data`` at SIMD ``level`` (``tag`` only picks the type)."""
    if data is double:
        return fdl_moments_f64_table(level)
    else:
        return fdl_moments_f32_table(level)


cdef inline int64_t comp_size(const data *tag) noexcept nogil:
    """Bytes of an element of the computation's type (float32 for float16)."""
    if data is uint16_t:
        return 4
    else:
        return sizeof(data)


cdef inline void mom_blocks(const void *M, const data *x, int64_t n, int64_t block,
                            double *mean, double *m2) noexcept nogil:
    if data is float:
        (<const fdl_moments_f32 *>M).blocks(x, n, block, mean, m2)
    elif data is double:
        (<const fdl_moments_f64 *>M).blocks(x, n, block, mean, m2)
    else:
        fdl_moments_blocks_f16(<const fdl_moments_f32 *>M, x, n, block, mean, m2)


cdef inline void mom_columns(const void *M, const data *x, int64_t rows, int64_t C, int64_t S,
                             void *work, double *mean, double *m2) noexcept nogil:
    # work: 4*C*S elements of the computation's type (float32 for float16)
    if data is float:
        fdl_colmoments_f32(<const fdl_moments_f32 *>M, x, rows, C, S, <float *>work, mean, m2)
    elif data is double:
        fdl_colmoments_f64(<const fdl_moments_f64 *>M, x, rows, C, S, <double *>work, mean, m2)
    else:
        fdl_colmoments_f16(<const fdl_moments_f32 *>M, x, rows, C, S, <float *>work, mean, m2)


cdef inline void mom_rows(const void *M, const floating *x, int64_t nrows, int64_t D,
                          double *mean, double *m2) noexcept nogil:
    if floating is float:
        fdl_rows_moments_f32(<const fdl_moments_f32 *>M, x, nrows, D, mean, m2)
    else:
        fdl_rows_moments_f64(<const fdl_moments_f64 *>M, x, nrows, D, mean, m2)


cdef inline void mom_segments(const void *M, const floating *x, int64_t nseg, int64_t len,
                              int64_t stride, double *work, double *mean,
                              double *m2) noexcept nogil:
    if floating is float:
        fdl_seg_moments_f32(<const fdl_moments_f32 *>M, x, nseg, len, stride, work, mean, m2)
    else:
        fdl_seg_moments_f64(<const fdl_moments_f64 *>M, x, nseg, len, stride, work, mean, m2)
