/* The decoding kernels' exp: polynomials and their constants, the scalar
 * twin of every SIMD exp in decodek_avx2.c / decodek_avx512.c.
 *
 * The SIMD versions evaluate the same constants with the same fma sequence
 * (C99 fmaf/fma here, correctly rounded like vfmadd), the same magic-number
 * rounding and the same exponent-field add, so every lane equals the scalar
 * value bitwise.  min/max follow the x86 semantics ((a < b) ? a : b). */
#ifndef FASTDL_DECODEK_EXP_H
#define FASTDL_DECODEK_EXP_H
#include <math.h>
#include <stdint.h>
#include <string.h>

/* float32: exp(d) for d <= 88; 0 below -86 (and for -inf / NaN: the kernels
 * flag NaN separately).  n = round(d*log2e) by the 1.5*2^23 trick, r = d - n*ln2
 * (two fma, Cephes split), e^r by the Cephes expf polynomial (max error about
 * 1 ulp), times 2^n by adding n to the exponent field. */
#define F32_LO (-86.0f)
#define F32_HI 88.0f
#define F32_MAGIC 12582912.0f
#define F32_LOG2E 1.44269504088896341f
#define F32_C1 0.693359375f
#define F32_C2 (-2.12194440e-4f)
#define F32_P0 1.9875691500e-4f
#define F32_P1 1.3981999507e-3f
#define F32_P2 8.3334519073e-3f
#define F32_P3 4.1665795894e-2f
#define F32_P4 1.6666665459e-1f
#define F32_P5 5.0000001201e-1f

/* float64: same scheme, 1.5*2^52 rounding, fdlibm ln2 split, Taylor degree 13
 * on |r| <= ln2/2 (truncation < 2e-18 relative); 0 below -708. */
#define F64_LO (-708.0)
#define F64_HI 709.0
#define F64_MAGIC 6755399441055744.0
#define F64_LOG2E 1.4426950408889634
#define F64_C1 6.93147180369123816490e-01
#define F64_C2 1.90821492927058770002e-10
#define F64_Q13 (1.0 / 6227020800.0)
#define F64_Q12 (1.0 / 479001600.0)
#define F64_Q11 (1.0 / 39916800.0)
#define F64_Q10 (1.0 / 3628800.0)
#define F64_Q9 (1.0 / 362880.0)
#define F64_Q8 (1.0 / 40320.0)
#define F64_Q7 (1.0 / 5040.0)
#define F64_Q6 (1.0 / 720.0)
#define F64_Q5 (1.0 / 120.0)
#define F64_Q4 (1.0 / 24.0)
#define F64_Q3 (1.0 / 6.0)
#define F64_Q2 0.5
#define F64_Q1 1.0

static inline float dk_minf(float a, float b) { return a < b ? a : b; }
static inline float dk_maxf(float a, float b) { return a > b ? a : b; }
static inline double dk_mind(double a, double b) { return a < b ? a : b; }
static inline double dk_maxd(double a, double b) { return a > b ? a : b; }

/* core: valid for d0 <= F32_HI; below F32_LO it gives exp(F32_LO) (~4e-38; the
 * sums use it as is: invisible next to the max term 1) */
static inline float dk_exp_core_f32(float d0) {
    float d = dk_maxf(d0, F32_LO);
    float t = fmaf(d, F32_LOG2E, F32_MAGIC);
    float nf = t - F32_MAGIC;
    float r = fmaf(-nf, F32_C1, d);
    r = fmaf(-nf, F32_C2, r);
    float z = r * r;
    float p = fmaf(F32_P0, r, F32_P1);
    p = fmaf(p, r, F32_P2);
    p = fmaf(p, r, F32_P3);
    p = fmaf(p, r, F32_P4);
    p = fmaf(p, r, F32_P5);
    float y = fmaf(p, z, r);
    y = y + 1.0f;
    uint32_t tb, yb;
    memcpy(&tb, &t, 4);
    memcpy(&yb, &y, 4);
    yb += tb << 23;
    memcpy(&y, &yb, 4);
    return y;
}

static inline float dk_exp_f32(float d0) {
    float y = dk_exp_core_f32(dk_minf(d0, F32_HI));
    return (d0 >= F32_LO) ? y : 0.0f;
}

static inline double dk_exp_core_f64(double d0) {
    double d = dk_maxd(d0, F64_LO);
    double t = fma(d, F64_LOG2E, F64_MAGIC);
    double nf = t - F64_MAGIC;
    double r = fma(-nf, F64_C1, d);
    r = fma(-nf, F64_C2, r);
    double p = fma(F64_Q13, r, F64_Q12);
    p = fma(p, r, F64_Q11);
    p = fma(p, r, F64_Q10);
    p = fma(p, r, F64_Q9);
    p = fma(p, r, F64_Q8);
    p = fma(p, r, F64_Q7);
    p = fma(p, r, F64_Q6);
    p = fma(p, r, F64_Q5);
    p = fma(p, r, F64_Q4);
    p = fma(p, r, F64_Q3);
    p = fma(p, r, F64_Q2);
    p = fma(p, r, F64_Q1);
    double y = fma(p, r, 1.0);
    uint64_t tb, yb;
    memcpy(&tb, &t, 8);
    memcpy(&yb, &y, 8);
    yb += tb << 52;
    memcpy(&y, &yb, 8);
    return y;
}

static inline double dk_exp_f64(double d0) {
    double y = dk_exp_core_f64(dk_mind(d0, F64_HI));
    return (d0 >= F64_LO) ? y : 0.0;
}

#endif
