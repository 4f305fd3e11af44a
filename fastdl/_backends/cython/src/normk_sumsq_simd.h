/* Intrinsic override of sumsq (normk_body.h, its scalar twin), written once
 * over a vector type; included by normk_avx2.c for both dtypes and by
 * normk_avx512.c for float64 (float32 keeps the AVX2 one there, see normk.c).
 * Lanes, tails and the lane tree are the twin's (2 * NL lanes, NK_LANES), so
 * the results agree bitwise.  Expects what normk_sums_simd.h expects. */
#include "normk_ahead.h"

ATTR double FN(sumsq)(const T *restrict x, int64_t n) {
    enum { NLV = NV * W, L = 2 * NLV };       /* 2 * NL lanes: add latency hidden */
    double tot = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += NK_FLUSH) {
        int64_t i1 = n - i0 < NK_FLUSH ? n : i0 + NK_FLUSH, i = i0;
        VT a[2 * NV];
        T arr[L];
        for (int j = 0; j < 2 * NV; j++) a[j] = V_ZERO();
        for (; i + L <= i1; i += L) {
            AHEAD_LINES(x + i, L);
            for (int j = 0; j < 2 * NV; j++) {
                VT v = V_LOAD(x + i + j * W);
                a[j] = V_ADD(a[j], V_MUL(v, v));
            }
        }
        for (int j = 0; j < 2 * NV; j++) V_STORE(arr + j * W, a[j]);
        for (; i < i1; i++) arr[i & (L - 1)] += x[i] * x[i];
        tot += NK_LANES(arr) + NK_LANES(arr + NLV);
    }
    return tot;
}

