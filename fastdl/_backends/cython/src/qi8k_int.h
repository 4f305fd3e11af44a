/* Internals shared by the int8-activation kernel files (qi8k*.c): the block-end
 * test and the quantizer body every tier compiles (elementwise IEEE operations:
 * identical on every ISA). */
#ifndef FASTDL_QI8K_INT_H
#define FASTDL_QI8K_INT_H
#include "qi8k.h"
#include "quantk_int.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* the float order of qi8k.h is written out once, in fdl_qi8_strip_scalar (qi8k.c) */
static inline int qi8_block_end(int64_t s, int64_t spb, int64_t nb32) {
    return (s + 1) % spb == 0 || s + 1 == nb32;
}

/* one row of x: blocks of 32 -> q (kp bytes, zero padded), d, sum of q; returns the
 * number of blocks holding a non-finite value */
static ALWAYS_INLINE int64_t qi8_quantize_row(const float *x, int64_t d_in, int64_t nb32,
                                              int8_t *q, float *d, int32_t *sq) {
    int64_t bad = 0;
    for (int64_t s = 0; s < nb32; s++) {
        float v[32], amax = 0.0f;
        int64_t m = d_in - 32 * s < 32 ? d_in - 32 * s : 32;
        for (int i = 0; i < 32; i++) v[i] = i < m ? x[32 * s + i] : 0.0f;
        int finite = 1;
        for (int i = 0; i < 32; i++) {
            float a = fabsf(v[i]);
            finite &= a <= FLT_MAX;
            amax = a > amax ? a : amax;
        }
        float ds = amax / 127.0f;
        /* tiny blocks would give an infinite 1/d: flushed to zero (error <= amax) */
        if (!finite || amax < 0x1p-100f) ds = 0.0f;
        bad += !finite;
        float id = ds != 0.0f ? 1.0f / ds : 0.0f;
        int32_t sum = 0;
        for (int i = 0; i < 32; i++) {
            float t = v[i] * id, r = truncf(t), f = t - r;
            r = fabsf(f) >= 0.5f ? r + (t < 0.0f ? -1.0f : 1.0f) : r;   /* half away from 0 */
            r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
            int8_t qi = (int8_t)(int)r;
            q[32 * s + i] = qi;
            sum += qi;
        }
        d[s] = ds;
        sq[s] = sum;
    }
    return bad;
}

/* the quantizer, per tier (the table's entry) */
typedef int64_t (*qi8_quant_fn)(const float *x, int64_t r0, int64_t r1, int64_t d_in,
                                int64_t kp, int8_t *qx, float *dx, int32_t *sq);
int64_t fdl_qi8_quant_scalar(const float *x, int64_t r0, int64_t r1, int64_t d_in, int64_t kp,
                             int8_t *qx, float *dx, int32_t *sq);
int64_t fdl_qi8_quant_avx2(const float *x, int64_t r0, int64_t r1, int64_t d_in, int64_t kp,
                           int8_t *qx, float *dx, int32_t *sq);
int64_t fdl_qi8_quant_avx512(const float *x, int64_t r0, int64_t r1, int64_t d_in, int64_t kp,
                             int8_t *qx, float *dx, int32_t *sq);

/* units of storage row j, values [r0, d_in) (r0 % 64 == 0) -> dst[0 .. kp - r0), zero padded */
void fdl_qi8_unpack_range(const fdl_qk_desc *q, int64_t j, int64_t r0, int64_t kp, int8_t *dst);

#define QI8_T512 __attribute__((target( \
    "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#endif
