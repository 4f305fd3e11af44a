/* Quantization kernels (quantize, dequantize, fused dequantize-matmul) for
 * _quant.pyx; storage format and arithmetic in fastdl/quant.py.
 *
 * Every entry point takes `level` (FDL_SIMD_SCALAR / FDL_SIMD_AVX2).  The
 * AVX2/FMA functions (FDL_TARGET_AVX2, never -march=native) and their scalar
 * twins give bitwise the same results:
 *
 * - quantize / dequantize / panel decoding are elementwise float32 operations
 *   (division, trunc/floor, compare, one multiply): identical by IEEE.
 * - qmatmul small path, transpose=False, n = 1 (factored): per column the dot
 *   product is defined in 8 lanes.  The "fast" part of a column is its whole
 *   32-value halves (4-bit: both halves of every full 64-group; int8: every full
 *   run of 32 values), usable when the block size is a multiple of 32 or
 *   per-tensor.  Four lane accumulators A[v] (v = vector 0..3 of the half) take
 *   A[v] = fma(x, unit, A[v]); at the end of each block (and at the end of the
 *   fast part) c = (A0 + A1) + (A2 + A3), T = fma(c, scale, T), A = 0.  The
 *   result is ((T0+T4)+(T2+T6)) + ((T1+T5)+(T3+T7)) plus the scalar "tail"
 *   (the remaining values, or the whole column for other block sizes):
 *   acc = acc + x*unit per block, tot = tot + acc*scale at each block end.
 * - qmatmul small path, transpose=False, n >= 2 (values): the column's float32
 *   values v = s*unit (exactly dequantize's) are decoded once; per (row,
 *   column) two lane accumulators, A0 for the vectors at offsets 0 and 16 of
 *   each whole 32-value chunk, A1 for 8 and 24: A = fma(x, v, A); result
 *   hsum(A0 + A1) (same lane order as above) + tail (acc = acc + x*v in order).
 * - qmatmul small path, transpose=True: y[i, r] = fma(x[i, j] * s_jb, unit,
 *   y[i, r]) for j = 0, 1, ... in order, elementwise (4 storage rows per pass,
 *   same sequence per element): identical for any thread split and twin.
 * - qmatmul large path: panels of `panel` decoded storage rows (float32
 *   values s*unit, exact) multiplied with BLAS sgemm/dgemm; panel boundaries
 *   are fixed, so the result does not depend on the thread count.
 */
#ifndef FASTDL_QUANTK_H
#define FASTDL_QUANTK_H
#include <stdint.h>

typedef void (*fdl_sgemm_t)(char *, char *, int *, int *, int *, float *, float *, int *,
                            float *, int *, float *, float *, int *);
typedef void (*fdl_dgemm_t)(char *, char *, int *, int *, int *, double *, double *, int *,
                            double *, int *, double *, double *, int *);

typedef struct {
    int64_t d_in, d_out;
    int64_t bs;          /* block size along d_in (d_in for per-tensor) */
    int64_t nb;          /* blocks per column (1 for per-tensor) */
    int64_t rowb;        /* bytes per storage row */
    int bits, nf4, per_tensor, dq;
    const uint8_t *data; /* (d_out, rowb) */
    const float *scales; /* (d_out*nb,) or (1,); NULL with dq */
    const int8_t *sc_codes;
    const float *sc_scales;
    float sc_mean;
} fdl_qk_desc;

void fdl_qk_init(void);
/* team sizes of the parallel regions (fdl_team of the _cpu extension) */
void fdl_qk_set_team(int (*team)(int nthreads, int64_t work_bytes, int64_t units));
/* the float32 NF4 thresholds used by quantize (for tests) */
const float *fdl_qk_nf4_thresholds(void);

/* w (d_in, d_out) row-major -> data (d_out, rowb) and scales ((d_out, nb) or (1,)).
 * Returns 0, or -1 when out of memory. */
int fdl_qk_quantize(const float *w, int64_t d_in, int64_t d_out, int bits, int nf4, int64_t bs,
                    int floor_, int per_tensor, uint8_t *data, float *scales, int nthreads,
                    int level);
/* out (d_in, d_out) float32 (f64 = 0) or float64 */
int fdl_qk_dequantize(const fdl_qk_desc *q, void *out, int f64, int nthreads, int level);
/* y = x @ W (transpose = 0; x (n, d_in), y (n, d_out)) or x @ W.T (x (n, d_out),
 * y (n, d_in)) */
int fdl_qk_matmul_small(const fdl_qk_desc *q, const void *x, int64_t n, void *y, int f64,
                        int transpose, int nthreads, int level);
int fdl_qk_matmul_large(const fdl_qk_desc *q, const void *x, int64_t n, void *y, int f64,
                        int transpose, int nthreads, int level, int64_t panel,
                        int decode_threads, fdl_sgemm_t sgemm, fdl_dgemm_t dgemm);

#endif
