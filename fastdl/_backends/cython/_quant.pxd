# The C API of the quantization kernels (src/quantk.h), cimported by _quant.pyx.
from libc.stdint cimport int64_t, uint8_t, int8_t, uint32_t

cdef extern from "quantk.h" nogil:
    ctypedef struct fdl_qk_desc:
        int64_t d_in, d_out, bs, nb, rowb
        int bits, nf4, per_tensor, dq
        const uint8_t *data
        const float *scales
        const int8_t *sc_codes
        const float *sc_scales
        float sc_mean
    ctypedef struct fdl_qk_kernels:
        pass
    ctypedef struct fdl_qk_qplan:
        int64_t R, JS, nstrips
    const fdl_qk_kernels *fdl_qk_table(int level)
    void fdl_qk_init()
    const float *fdl_qk_nf4_thresholds()
    void fdl_qk_qplan_init(fdl_qk_qplan *p, int64_t d_in, int64_t d_out, int bits, int nf4,
                           int64_t bs, int floor_, int per_tensor, int nthreads)
    uint32_t fdl_qk_absmax_bits(const float *w, int64_t i0, int64_t i1)
    float fdl_qk_qplan_tensor_scale(fdl_qk_qplan *p, uint32_t mb)
    void fdl_qk_quantize_strip(const fdl_qk_kernels *K, const fdl_qk_qplan *p, const float *w,
                               int64_t s, uint8_t *data, float *scales, uint8_t *buf, float *msc)
    int64_t fdl_qk_dequantize_strips(const fdl_qk_desc *q)
    void fdl_qk_dequantize_strip(const fdl_qk_kernels *K, const fdl_qk_desc *q, int64_t s,
                                 void *out, int f64)
    int64_t FDL_QK_MV_COLS
    int64_t fdl_qk_mv1_xl_len(const fdl_qk_desc *q)
    void fdl_qk_mv1_perm(const fdl_qk_desc *q, const float *x, float *xl)
    void fdl_qk_mv1_cols(const fdl_qk_kernels *K, const fdl_qk_desc *q, const float *x,
                         const float *xl, float *y, int64_t j0, int64_t j1)
    void fdl_qk_mvn_cols(const fdl_qk_kernels *K, const fdl_qk_desc *q, const float *xp,
                         int64_t ldp, int64_t n, float *y, int64_t j0, int64_t j1, float *val)
    void fdl_qk_mv_col_f64(const fdl_qk_kernels *K, const fdl_qk_desc *q, int64_t j,
                           const double *x, int64_t n, double *y, float *vbuf)
    void fdl_qk_mt_plan(const fdl_qk_desc *q, int64_t n, int nthreads, int64_t *ch, int64_t *nch)
    void fdl_qk_mt_chunk(const fdl_qk_kernels *K, const fdl_qk_desc *q, int64_t c, int64_t ch,
                         const float *x, int64_t n, float *y, float *cs, float *yb, int64_t ldb)
    void fdl_qk_mt_chunk_f64(const fdl_qk_kernels *K, const fdl_qk_desc *q, int64_t c,
                             int64_t ch, const double *x, int64_t n, double *y, float *ubuf)
    void fdl_qk_decode_row(const fdl_qk_kernels *K, const fdl_qk_desc *q, int64_t j, void *dst,
                           int f64)
    int fdl_qk_release_team()


ctypedef fused real:
    float
    double

# the checked descriptor of a QuantizedTensor (keep holds its arrays alive)
cdef int _desc(fdl_qk_desc *d, q, dict keep, bint as_absmax=*) except -1
