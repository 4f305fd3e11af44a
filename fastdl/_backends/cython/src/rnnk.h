/* Bidirectional tanh RNN kernels: the elementwise parts of the time loop that
 * _rnn.pyx runs between its BLAS calls.  A table per (dtype, ISA) holds the
 * body (rnnk_body.h) compiled for that ISA; fdl_rnnk_*_table(level) returns
 * the table of a SIMD level (simd.h).  Every kernel is elementwise or a
 * column sum in a fixed row order, so every table of a dtype rounds
 * identically (no fma, fp-contract off).
 *
 * tanh (rnnk_tanh.h), error against the exact tanh of the input:
 *   float32: at most 1.5 ulp over every float32 (measured: max 1.33 ulp, at
 *   x = 0.6283, sweeping all 2^31 non-negative bit patterns; negative inputs
 *   are their mirror bitwise);
 *   float64: at most 1.5 ulp on a dense grid (every binade from 2^-60 to 2^6,
 *   and steps of 1e-5 on [0, 20]; measured: max 1.31 ulp against 40-digit
 *   values, at most 2 ulp from the C library's tanh).
 * tanh(NaN) is NaN, tanh(+-inf) = +-1, tanh(-0) = -0, and the result is odd
 * (tanh(-x) = -tanh(x) bitwise) and never outside [-1, 1]. */
#ifndef FASTDL_RNNK_H
#define FASTDL_RNNK_H
#include <stdint.h>

#define FDL_RNNK_FUNCS(T)                                                          \
    /* a[i, j] = tanh(a[i, j] + b[j]) for m rows of n (b NULL: no bias) */         \
    void (*bias_tanh)(T *a, int64_t m, int64_t n, const T *b);                     \
    /* d[k] = d[k] * (1 - h[k] * h[k]): the pre-activation gradient of a step */    \
    void (*dtanh)(T *d, const T *h, int64_t n);                                    \
    /* a[i, j] += c[j] for m rows of n */                                            \
    void (*add_rows)(T *a, int64_t m, int64_t n, const T *c);                     \
    /* out[j] = sum over rows i of a[i, j] (m rows of n), in double, blocks of     \
     * FDL_RNNK_SUM_BLOCK rows summed in row order then added in block order;     \
     * acc: 2 n doubles of scratch */                                              \
    void (*colsum)(const T *a, int64_t m, int64_t n, T *out, double *acc);         \
    /* y[k] = tanh(x[k]) (the tests' window on the tanh) */                         \
    void (*tanh)(const T *x, T *y, int64_t n);

#define FDL_RNNK_SUM_BLOCK 64

typedef struct { FDL_RNNK_FUNCS(float) } fdl_rnnk_f32;
typedef struct { FDL_RNNK_FUNCS(double) } fdl_rnnk_f64;

const fdl_rnnk_f32 *fdl_rnnk_f32_table(int level);
const fdl_rnnk_f64 *fdl_rnnk_f64_table(int level);
#endif
