/* The RNN kernels' tanh, one element, plain C: the scalar twin that every ISA
 * build of rnnk_body.h inlines and vectorizes (no fma, fp-contract off, so
 * every lane rounds as this code does).
 *
 * |x| < 0.625: tanh(x) = x + x z P(z), z = x^2, P interpolating
 *   (tanh(x) - x) / x^3 at the Chebyshev nodes of z in [0, 0.625^2] (degree 4
 *   for float32, 11 for float64; nodes and values in 50-digit arithmetic,
 *   coefficients rounded to the type).  The correction x z P is at most 13%
 *   of x, so the result is x's precision plus a fraction of an ulp.
 * |x| >= 0.625: tanh(|x|) = 1 - 2 / (e + 1), e = exp(2 min(|x|, 20)) (tanh(20)
 *   rounds to 1 in both types): n = round(y log2 e) by the 1.5 * 2^(p-1)
 *   trick, r = y - n ln2 with ln2 split so that n * hi is exact, e^r by a
 *   polynomial (Cephes expf for float32, Taylor degree 13 for float64), times
 *   2^n by adding n to the exponent field.  For e >= e^1.25 the division step
 *   shrinks e's relative error (d tanh / tanh <= 0.8 de / e).
 * The sign is |x|'s result with x's sign bit; NaN stays NaN (its own bits).
 * Bounds (rnnk.h): at most 1.5 ulp in both types. */
#ifndef FASTDL_RNNK_TANH_H
#define FASTDL_RNNK_TANH_H
#include <stdint.h>
#include <string.h>

#define RK32_SMALL 0.625f
#define RK32_CLAMP 20.0f
#define RK32_MAGIC 12582912.0f
#define RK32_LOG2E 1.44269504088896341f
#define RK32_C1 0.693359375f
#define RK32_C2 (-2.12194440e-4f)
#define RK32_P0 1.9875691500e-4f
#define RK32_P1 1.3981999507e-3f
#define RK32_P2 8.3334519073e-3f
#define RK32_P3 4.1665795894e-2f
#define RK32_P4 1.6666665459e-1f
#define RK32_P5 5.0000001201e-1f
#define RK32_S0 (-0.333333283662796f)
#define RK32_S1 0.1333276927471161f
#define RK32_S2 (-0.05385090783238411f)
#define RK32_S3 0.020997179672122f
#define RK32_S4 (-0.006096714176237583f)

static inline float rk_tanh_f32(float x) {
    uint32_t xb, ab, tb, eb, rb;
    memcpy(&xb, &x, 4);
    ab = xb & 0x7fffffffu;
    float a;
    memcpy(&a, &ab, 4);
    float z = a * a;
    float p = RK32_S4;
    p = p * z + RK32_S3;
    p = p * z + RK32_S2;
    p = p * z + RK32_S1;
    p = p * z + RK32_S0;
    float small = a + (a * z) * p;
    float y = 2.0f * (a < RK32_CLAMP ? a : RK32_CLAMP);
    float t = y * RK32_LOG2E + RK32_MAGIC;
    float nf = t - RK32_MAGIC;
    float r = y - nf * RK32_C1;
    r = r - nf * RK32_C2;
    float q = RK32_P0;
    q = q * r + RK32_P1;
    q = q * r + RK32_P2;
    q = q * r + RK32_P3;
    q = q * r + RK32_P4;
    q = q * r + RK32_P5;
    float e = (q * (r * r) + r) + 1.0f;
    memcpy(&tb, &t, 4);
    memcpy(&eb, &e, 4);
    eb += tb << 23;
    memcpy(&e, &eb, 4);
    float large = 1.0f - 2.0f / (e + 1.0f);
    float res = a < RK32_SMALL ? small : large;
    memcpy(&rb, &res, 4);
    rb |= xb & 0x80000000u;
    rb = ab > 0x7f800000u ? xb : rb;          /* NaN: x itself */
    memcpy(&res, &rb, 4);
    return res;
}

#define RK64_SMALL 0.625
#define RK64_CLAMP 20.0
#define RK64_MAGIC 6755399441055744.0
#define RK64_LOG2E 1.4426950408889634
#define RK64_C1 6.93147180369123816490e-01
#define RK64_C2 1.90821492927058770002e-10
#define RK64_S0 (-0.3333333333333333)
#define RK64_S1 0.13333333333333042
#define RK64_S2 (-0.05396825396789699)
#define RK64_S3 0.021869488519008305
#define RK64_S4 (-0.008863235103240878)
#define RK64_S5 0.0035921217511549622
#define RK64_S6 (-0.0014557754120478055)
#define RK64_S7 0.0005896606577757043
#define RK64_S8 (-0.0002375906496055562)
#define RK64_S9 9.257116129556769e-05
#define RK64_S10 (-3.12011014257974e-05)
#define RK64_S11 6.485163482793113e-06

static inline double rk_tanh_f64(double x) {
    uint64_t xb, ab, tb, eb, rb;
    memcpy(&xb, &x, 8);
    ab = xb & 0x7fffffffffffffffull;
    double a;
    memcpy(&a, &ab, 8);
    double z = a * a;
    double p = RK64_S11;
    p = p * z + RK64_S10;
    p = p * z + RK64_S9;
    p = p * z + RK64_S8;
    p = p * z + RK64_S7;
    p = p * z + RK64_S6;
    p = p * z + RK64_S5;
    p = p * z + RK64_S4;
    p = p * z + RK64_S3;
    p = p * z + RK64_S2;
    p = p * z + RK64_S1;
    p = p * z + RK64_S0;
    double small = a + (a * z) * p;
    double y = 2.0 * (a < RK64_CLAMP ? a : RK64_CLAMP);
    double t = y * RK64_LOG2E + RK64_MAGIC;
    double nf = t - RK64_MAGIC;
    double r = y - nf * RK64_C1;
    r = r - nf * RK64_C2;
    double q = 1.0 / 6227020800.0;
    q = q * r + 1.0 / 479001600.0;
    q = q * r + 1.0 / 39916800.0;
    q = q * r + 1.0 / 3628800.0;
    q = q * r + 1.0 / 362880.0;
    q = q * r + 1.0 / 40320.0;
    q = q * r + 1.0 / 5040.0;
    q = q * r + 1.0 / 720.0;
    q = q * r + 1.0 / 120.0;
    q = q * r + 1.0 / 24.0;
    q = q * r + 1.0 / 6.0;
    q = q * r + 0.5;
    double e = (q * (r * r) + r) + 1.0;
    memcpy(&tb, &t, 8);
    memcpy(&eb, &e, 8);
    eb += tb << 52;
    memcpy(&e, &eb, 8);
    double large = 1.0 - 2.0 / (e + 1.0);
    double res = a < RK64_SMALL ? small : large;
    memcpy(&rb, &res, 8);
    rb |= xb & 0x8000000000000000ull;
    rb = ab > 0x7ff0000000000000ull ? xb : rb;  /* NaN: x itself */
    memcpy(&res, &rb, 8);
    return res;
}
#endif
