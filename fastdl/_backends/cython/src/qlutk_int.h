/* Internals of the lookup-table kernels (qlutk*.c): the function table each
 * SIMD level fills and the plain-C bodies every level compiles (qlutk_body.h).
 * Layout and arithmetic contracts: qlutk.h. */
#ifndef FASTDL_QLUTK_INT_H
#define FASTDL_QLUTK_INT_H
#include "qlutk.h"
#include "simd.h"

#include <float.h>
#include <stdint.h>
#include <string.h>

#define QL_ALWAYS_INLINE inline __attribute__((always_inline))

extern const float fdl_qlut_nf4[16];

struct fdl_qlut_kernels {
    /* rows of x one `run` call takes at most */
    int rmax;
    /* tables of chunks [c0, c1) of one row x (d_in floats) -> tab (tab_per_chunk each) */
    void (*tables)(const fdl_qlut_desc *q, const float *x, int64_t c0, int64_t c1, float *tab);
    /* the nb block scales of column j -> dst[b] */
    void (*scales)(const fdl_qlut_desc *q, int64_t j, float *dst);
    /* chunks [c0, c1) of one tile (w: its words from chunk c0) for nr <= rmax rows:
     * tables of row r at tab + r*ldt (from chunk c0), the tile's scales sc[16 b + l],
     * state of row r at st + r*FDL_QLUT_ST (8 chains, then y) */
    void (*run)(const fdl_qlut_desc *q, const uint32_t *w, int64_t c0, int64_t c1,
                const float *tab, int64_t ldt, int nr, const float *sc, float *st);
    /* NULL, or NF4 with one row over two tiles at once (the second's words, scales and
     * state `wstride`, `sstride`, `ststride` on): `run` on each, bitwise */
    void (*run2)(const fdl_qlut_desc *q, const uint32_t *w, int64_t wstride, int64_t c0,
                 int64_t c1, const float *tab, const float *sc, int64_t sstride, float *st,
                 int64_t ststride);
};

/* the scale block of chunks from c on and the chunk that ends it, advanced by
 * ql_bnext (no division per chunk) */
typedef struct { int64_t b, end; } ql_bcur;
static inline ql_bcur ql_bcur_init(const fdl_qlut_desc *q, int64_t c) {
    ql_bcur k;
    k.b = c / q->cpb;
    k.end = (k.b + 1) * q->cpb - 1;
    if (k.end > q->NC - 1) k.end = q->NC - 1;
    return k;
}
static inline void ql_bnext(const fdl_qlut_desc *q, ql_bcur *k) {
    k->b++;
    k->end += q->cpb;
    if (k->end > q->NC - 1) k->end = q->NC - 1;
}

/* the block partial of lane l from the chains A[2k + h][l] (qlutk.h) */
static QL_ALWAYS_INLINE float ql_part(const fdl_qlut_desc *q, const float (*A)[16], int l) {
    if (q->nf4)
        return ((A[0][l] + A[1][l]) + (A[2][l] + A[3][l])) +
               ((A[4][l] + A[5][l]) + (A[6][l] + A[7][l]));
    int W = q->bits;
    float part = A[0][l] + A[1][l];
    for (int k = 1; k < W - 1; k++) part = part + (float)(1 << k) * (A[2 * k][l] + A[2 * k + 1][l]);
    return part - (float)(1 << (W - 1)) * (A[2 * W - 2][l] + A[2 * W - 1][l]);
}

void fdl_qlut_tables_scalar(const fdl_qlut_desc *q, const float *x, int64_t c0, int64_t c1,
                            float *tab);
void fdl_qlut_scales_scalar(const fdl_qlut_desc *q, int64_t j, float *dst);
void fdl_qlut_run_scalar(const fdl_qlut_desc *q, const uint32_t *w, int64_t c0, int64_t c1,
                         const float *tab, int64_t ldt, int nr, const float *sc, float *st);
#if FDL_HAVE_AVX2_TARGET
void fdl_qlut_tables_avx2(const fdl_qlut_desc *q, const float *x, int64_t c0, int64_t c1,
                          float *tab);
void fdl_qlut_scales_avx2(const fdl_qlut_desc *q, int64_t j, float *dst);
void fdl_qlut_run_avx2(const fdl_qlut_desc *q, const uint32_t *w, int64_t c0, int64_t c1,
                       const float *tab, int64_t ldt, int nr, const float *sc, float *st);
void fdl_qlut_tables_avx512(const fdl_qlut_desc *q, const float *x, int64_t c0, int64_t c1,
                            float *tab);
void fdl_qlut_scales_avx512(const fdl_qlut_desc *q, int64_t j, float *dst);
void fdl_qlut_run_avx512(const fdl_qlut_desc *q, const uint32_t *w, int64_t c0, int64_t c1,
                         const float *tab, int64_t ldt, int nr, const float *sc, float *st);
void fdl_qlut_run2_avx512(const fdl_qlut_desc *q, const uint32_t *w, int64_t wstride,
                          int64_t c0, int64_t c1, const float *tab, const float *sc,
                          int64_t sstride, float *st, int64_t ststride);
#endif

#endif
