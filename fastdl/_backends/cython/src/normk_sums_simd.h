/* Intrinsic overrides of the row reductions of normk_body.h (row_sums,
 * rms_sums, seg_sums: their scalar twins; sumsq is in normk_sumsq_simd.h),
 * written once over a vector type and included by normk_avx2.c /
 * normk_avx512.c once per dtype.
 *
 * The compiler's vectorization of the body versions was fragile (adding a
 * prefetch to the loop made it scalar), and these loops prefetch: both inputs
 * are requested AHEAD_BYTES ahead, since hardware prefetchers restart at every
 * page (~25% faster on the project's machines).  Lane k of each accumulator
 * array holds the same terms, added in the same order, as lane k of the twin
 * (NL = NV * W lanes, the body's count for every ISA); the tails repeat the
 * twin's loops and the lanes are reduced by the twin's own NK_LANES, so the
 * results agree bitwise.
 *
 * Expects T, VT (vector of W elements), NV, NK_LANES, ATTR, the
 * one-instruction helpers V_LOAD, V_STORE, V_ADD, V_SUB, V_MUL, V_SET1,
 * V_ZERO, and FN(name) (the override's name). */
#include "normk_ahead.h"

ATTR void FN(row_sums)(const T *restrict dy, const T *restrict x, int64_t n, T mh, T ml, T r,
                       const T *restrict w, T *restrict dwp, T *restrict dbp, double *s1,
                       double *s2) {
    enum { L = NV * W };
    VT vmh = V_SET1(mh), vml = V_SET1(ml), vr = V_SET1(r);
    double t1 = 0.0, t2 = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += NK_FLUSH) {
        int64_t i1 = n - i0 < NK_FLUSH ? n : i0 + NK_FLUSH, i = i0;
        VT a1[NV], a2[NV];
        T b1[L], b2[L];
        for (int j = 0; j < NV; j++) a1[j] = a2[j] = V_ZERO();
        for (; i + L <= i1; i += L) {
            AHEAD_LINES(dy + i, L);
            AHEAD_LINES(x + i, L);
            for (int j = 0; j < NV; j++) {
                int64_t o = i + j * W;
                VT d = V_LOAD(dy + o);
                VT xh = V_MUL(V_SUB(V_SUB(V_LOAD(x + o), vmh), vml), vr);
                VT g = V_MUL(d, V_LOAD(w + o));
                a1[j] = V_ADD(a1[j], g);
                a2[j] = V_ADD(a2[j], V_MUL(g, xh));
                V_STORE(dwp + o, V_ADD(V_LOAD(dwp + o), V_MUL(d, xh)));
                V_STORE(dbp + o, V_ADD(V_LOAD(dbp + o), d));
            }
        }
        for (int j = 0; j < NV; j++) {
            V_STORE(b1 + j * W, a1[j]);
            V_STORE(b2 + j * W, a2[j]);
        }
        for (; i < i1; i++) {
            T xh = ((x[i] - mh) - ml) * r, d = dy[i], g = d * w[i];
            b1[i & (L - 1)] += g;
            b2[i & (L - 1)] += g * xh;
            dwp[i] += d * xh;
            dbp[i] += d;
        }
        t1 += NK_LANES(b1);
        t2 += NK_LANES(b2);
    }
    *s1 = t1;
    *s2 = t2;
}

ATTR double FN(rms_sums)(const T *restrict dy, const T *restrict x, int64_t n, T r,
                         const T *restrict w, T *restrict dwp) {
    enum { L = NV * W };
    VT vr = V_SET1(r);
    double t2 = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += NK_FLUSH) {
        int64_t i1 = n - i0 < NK_FLUSH ? n : i0 + NK_FLUSH, i = i0;
        VT a2[NV];
        T b2[L];
        for (int j = 0; j < NV; j++) a2[j] = V_ZERO();
        for (; i + L <= i1; i += L) {
            AHEAD_LINES(dy + i, L);
            AHEAD_LINES(x + i, L);
            for (int j = 0; j < NV; j++) {
                int64_t o = i + j * W;
                VT d = V_LOAD(dy + o), xh = V_MUL(V_LOAD(x + o), vr);
                a2[j] = V_ADD(a2[j], V_MUL(V_MUL(d, V_LOAD(w + o)), xh));
                V_STORE(dwp + o, V_ADD(V_LOAD(dwp + o), V_MUL(d, xh)));
            }
        }
        for (int j = 0; j < NV; j++) V_STORE(b2 + j * W, a2[j]);
        for (; i < i1; i++) {
            T xh = x[i] * r, d = dy[i];
            b2[i & (L - 1)] += d * w[i] * xh;
            dwp[i] += d * xh;
        }
        t2 += NK_LANES(b2);
    }
    return t2;
}

ATTR void FN(seg_sums)(const T *restrict dy, const T *restrict x, int64_t n, T mh, T ml, T r,
                       double *A, double *B) {
    enum { L = NV * W };
    VT vmh = V_SET1(mh), vml = V_SET1(ml), vr = V_SET1(r);
    double tA = 0.0, tB = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += NK_FLUSH) {
        int64_t i1 = n - i0 < NK_FLUSH ? n : i0 + NK_FLUSH, i = i0;
        VT a[NV], b[NV];
        T ba[L], bb[L];
        for (int j = 0; j < NV; j++) a[j] = b[j] = V_ZERO();
        for (; i + L <= i1; i += L) {
            AHEAD_LINES(dy + i, L);
            AHEAD_LINES(x + i, L);
            for (int j = 0; j < NV; j++) {
                int64_t o = i + j * W;
                VT d = V_LOAD(dy + o);
                a[j] = V_ADD(a[j], V_MUL(d, V_MUL(V_SUB(V_SUB(V_LOAD(x + o), vmh), vml), vr)));
                b[j] = V_ADD(b[j], d);
            }
        }
        for (int j = 0; j < NV; j++) {
            V_STORE(ba + j * W, a[j]);
            V_STORE(bb + j * W, b[j]);
        }
        for (; i < i1; i++) {
            ba[i & (L - 1)] += dy[i] * (((x[i] - mh) - ml) * r);
            bb[i & (L - 1)] += dy[i];
        }
        tA += NK_LANES(ba);
        tB += NK_LANES(bb);
    }
    *A += tA;
    *B += tB;
}
