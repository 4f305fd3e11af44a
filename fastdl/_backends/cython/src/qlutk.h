/* Lookup-table kernels of y = x @ W for a quantized W in the "lut" layout
 * (bits 2..4 absmax codes, NF4 codes), float32, small n; for _qlut.pyx.
 *
 * Layout (uint32 words, little-endian; the NumPy definition is
 * fastdl/_backends/numpy/quant_lut.py): d_out is cut in NT = ceil(d_out/16)
 * tiles of 16 output columns, d_in in NC = ceil(d_in/32) chunks of 32 inputs.
 * Word (t, c, k, l), k < W (W = bits), l < 16, sits at ((t*NC + c)*W + k)*16 + l:
 * word k of column j = 16t + l for inputs 32c .. 32c+31.  Its nibble m (bits
 * 4m..4m+3) is
 *   NF4:    the code of input 32c + 8k + m;
 *   absmax: plane k of group m: bit i = bit k of (code XOR 2^(W-1)) of input
 *           32c + 4m + i, i.e. of the W-bit two's complement of q = code - 2^(W-1).
 * Padding (columns >= d_out, inputs >= d_in) holds q = 0 (NF4 code 7, absmax
 * all planes 0).
 *
 * Arithmetic (every tier, every lane the same sequence; lanes are columns):
 * tables per row of x: NF4 T_i[c] = NF4[c] * x_i for each input i; absmax, for
 * each group of 4 inputs, the subset sums U[0] = 0, U[1] = x0, U[2] = x1,
 * U[3] = x0 + x1, U[4 + k] = U[k] + x2, U[8 + k] = U[k] + x3 (k < 4, < 8);
 * inputs >= d_in are 0.  Accumulators A[2k + h] (h = m >> 2): for each chunk
 * of a block, for each word k and nibble m, A[2k + h] = A[2k + h] + T[nibble]
 * (T = the table of input 8k+m (NF4) or of group m (absmax)).  At the end of
 * each block (chunk c ends a block when (c+1) % cpb == 0 or c+1 == NC):
 *   NF4:    part = ((A0+A1) + (A2+A3)) + ((A4+A5) + (A6+A7))
 *   absmax: P_k = A[2k] + A[2k+1]; part = P_0; part = part + 2^k * P_k for
 *           k = 1..W-2; part = part - 2^(W-1) * P_{W-1}
 * then y = y + s * part (s the block's scale, decoded as the rows layout's),
 * A = 0.  Tiles are independent, so any split over threads gives the same y.
 */
#ifndef FASTDL_QLUTK_H
#define FASTDL_QLUTK_H
#include <stdint.h>

#define FDL_QLUT_TILE 16
#define FDL_QLUT_CHUNK 32
/* floats of one (row, tile) accumulator state: 8 chains + y, 16 lanes each */
#define FDL_QLUT_ST 144

typedef struct {
    int64_t d_in, d_out;
    int64_t NT, NC;      /* tiles, chunks */
    int64_t cpb;         /* chunks per scale block (NC: one block) */
    int64_t nb;          /* scale blocks per column (1 per tensor) */
    int64_t ib;          /* chunks per input block (the tables held in L1) */
    int bits, nf4, per_tensor, dq;
    const uint32_t *lut; /* NT * NC * bits * 16 words */
    const float *scales; /* (d_out*nb,) or (1,); NULL with dq */
    const int8_t *sc_codes;
    const float *sc_scales;
    float sc_mean;
    const float *tsc;    /* NULL, or the scales in tile order (fdl_qlut_tile_scales) */
    const float *tabs;   /* every row's tables (fdl_qlut_tables_rows), for fdl_qlut_tiles */
} fdl_qlut_desc;

typedef struct fdl_qlut_kernels fdl_qlut_kernels;
const fdl_qlut_kernels *fdl_qlut_table(int level);

/* table floats per chunk and row: 32*16 (NF4) or 8*16 (absmax) */
int64_t fdl_qlut_tab_per_chunk(const fdl_qlut_desc *q);
/* scratch floats one fdl_qlut_tiles call needs for at most `tiles` tiles and n rows */
int64_t fdl_qlut_scratch(const fdl_qlut_desc *q, int64_t n, int64_t tiles);
/* the block scales of tiles [t0, t1) in the order the kernels read them:
 * out[((t - t0) * nb + b) * 16 + l] = scale of block b of column 16t + l (0 past d_out);
 * tmp holds nb floats */
void fdl_qlut_tile_scales(const fdl_qlut_kernels *K, const fdl_qlut_desc *q, int64_t t0,
                          int64_t t1, float *out, float *tmp);
/* the tables of chunks [c0, c1) of every row of x (n, d_in) into tabs: row r's chunk c at
 * tabs + (r * NC + c) * fdl_qlut_tab_per_chunk(q); fdl_qlut_tiles reads them from q->tabs
 * (built once, so any split of the tiles shares one set) */
void fdl_qlut_tables_rows(const fdl_qlut_kernels *K, const fdl_qlut_desc *q, const float *x,
                          int64_t n, int64_t c0, int64_t c1, float *tabs);
/* y[:, 16 t0 .. 16 t1) (clipped to d_out) for the n rows whose tables are q->tabs; serial */
void fdl_qlut_tiles(const fdl_qlut_kernels *K, const fdl_qlut_desc *q, int64_t n, int64_t t0,
                    int64_t t1, float *y, float *scratch);

/* layout conversion of tile t: rows (d_out, rowb) bytes of the rows layout
 * (fastdl.quant) <-> lut; pack returns 1 when a code does not fit `bits` (absmax) */
int fdl_qlut_pack_tile(const uint8_t *rows, int64_t rowb, int64_t d_in, int64_t d_out, int bits,
                       int nf4, int64_t t, uint32_t *lut);
void fdl_qlut_unpack_tile(const uint32_t *lut, int64_t d_in, int64_t d_out, int bits, int nf4,
                          int64_t t, uint8_t *rows, int64_t rowb);

#endif
