/* AMX-INT8 tier of the int8-activation matmul, for many rows: tile products of 16 rows x
 * 16 columns x one 32-block (tdpbssd: x's int8 q times the weight units, exact int32),
 * then the float order of qi8k.h on the 16 x 16 sums (twin: fdl_qi8_strip_scalar, the
 * same integers and float order, so the same bits).  The weights come reordered
 * (fdl_qi8_t): a tile's units are unpacked once into the B-tile order, which is that
 * order's (operand i = tile row i: 4 inputs per column). */
#include "qi8k_int.h"

#if FDL_QI8_HAVE_AMX
#include <sys/syscall.h>
#include <unistd.h>

#define QI8_TAMX __attribute__((target( \
    "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,amx-tile,amx-int8")))

/* AMX-INT8 on the CPU, and the kernel's permission for this process to use the tile
 * state (Linux asks each process to request it once) */
int fdl_qi8_amx_ok(void) {
    static int ok = -1;
    if (ok < 0) {
        __builtin_cpu_init();
        int has = __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-int8") &&
                  __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
        /* ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA */
        ok = has && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    }
    return ok;
}

typedef struct {
    uint8_t palette, start;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} qi8_tilecfg;

/* tile t's units in B order: 32-block s at bb + 512 s, row i = inputs 32s + 4i .. + 3 of
 * the 16 columns (4 bytes each) */
static QI8_TAMX void amx_units(const fdl_qi8_t *T, int64_t t, int8_t *bb) {
    const int64_t nb32 = T->nb32, bps = T->wide ? 512 : 256;
    const uint8_t *w = T->wt + t * nb32 * bps;
    const __m512i m0f = _mm512_set1_epi8(0x0f), offv = _mm512_set1_epi8((char)T->off);
    for (int64_t s = 0; s < nb32; s++) {
        const uint8_t *ws = w + s * bps;
        int8_t *o = bb + s * 512;
        if (T->wide) {
            for (int i = 0; i < 8; i++)      /* code = unit + 128: the sign bit flipped */
                _mm512_storeu_si512(o + 64 * i, _mm512_xor_si512(_mm512_loadu_si512(ws + 64 * i),
                                                                _mm512_set1_epi8((char)0x80)));
        } else {
            for (int p = 0; p < 4; p++) {
                __m512i v = _mm512_loadu_si512(ws + 64 * p);
                _mm512_storeu_si512(o + 128 * p, _mm512_sub_epi8(_mm512_and_si512(v, m0f), offv));
                _mm512_storeu_si512(o + 128 * p + 64,
                                    _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi32(v, 4), m0f), offv));
            }
        }
    }
}

/* row tiles per pass over the weight tiles: their packed q (16 rows x 32 bytes per
 * 32-block) stays in L2 while the tiles' units stream once per pass */
#define QI8_AMX_RCH 8

/* row tile rt x column tile t over all 32-blocks.  ONE (weight blocks of one 32-block,
 * llama.cpp's formats): every block ends a weight block, so the totals stay in registers
 * and the block sum is a temporary; else the block sums stay in registers and the totals
 * wait in tot (the same operations either way) */
static QI8_TAMX ALWAYS_INLINE void amx_rows(const fdl_qi8_t *T, const fdl_qi8_x *X,
                                            const int8_t *xk, const float *dk, float *y,
                                            int64_t t, int64_t rt, const int8_t *bb,
                                            int32_t *cb, float *tot, __mmask16 m, const int ONE) {
    const int64_t nb32 = X->nb32, spb = T->spb;
    const int8_t *xa = xk + rt * nb32 * 512;
    const float *dr = dk + rt * nb32 * 16;
    const float *sc = T->st + t * T->nbw * 16;
    __m512 acc[16];                      /* ONE: the totals; else the block sums */
    for (int r = 0; r < 16; r++) {
        acc[r] = _mm512_setzero_ps();
        if (!ONE) _mm512_storeu_ps(tot + 16 * r, acc[r]);
    }
    int64_t left = spb, B = 0;
    for (int64_t s = 0; s < nb32; s++) {
        _tile_zero(0);
        _tile_loadd(1, xa + 512 * s, 32);
        _tile_loadd(2, bb + s * 512, 64);
        _tile_dpbssd(0, 1, 2);
        _tile_stored(0, cb, 64);
        if (ONE) {
            __m512 sv = _mm512_loadu_ps(sc + 16 * s);
            for (int r = 0; r < 16; r++) {
                __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(cb + 16 * r)),
                                           _mm512_set1_ps(dr[16 * s + r]), _mm512_setzero_ps());
                acc[r] = _mm512_fmadd_ps(f, sv, acc[r]);
            }
            continue;
        }
        for (int r = 0; r < 16; r++)
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(cb + 16 * r)),
                                     _mm512_set1_ps(dr[16 * s + r]), acc[r]);
        if (--left == 0 || s + 1 == nb32) {
            __m512 sv = _mm512_loadu_ps(sc + 16 * B);
            for (int r = 0; r < 16; r++) {
                _mm512_storeu_ps(tot + 16 * r, _mm512_fmadd_ps(acc[r], sv, _mm512_loadu_ps(tot + 16 * r)));
                acc[r] = _mm512_setzero_ps();
            }
            B++;
            left = spb;
        }
    }
    for (int r = 0; r < 16 && 16 * rt + r < X->n; r++)
        _mm512_mask_storeu_ps(y + (16 * rt + r) * T->d_out + 16 * t, m,
                              ONE ? acc[r] : _mm512_loadu_ps(tot + 16 * r));
}

/* y[:, 16 t0 .. 16 t1) for all rows.  xk: x's q packed per 16-row tile and 32-block,
 * xk[((rt nb32 + s) 16 + r) 32 + k] (rows past n zero), dk: its scales likewise,
 * dk[(rt nb32 + s) 16 + r]; scratch: fdl_qi8_amx_scratch bytes */
QI8_TAMX void fdl_qi8_amx(const fdl_qi8_t *T, const fdl_qi8_x *X, const int8_t *xk,
                          const float *dk, float *y, int64_t t0, int64_t t1, void *scratch) {
    const int64_t nb32 = X->nb32, nrt = (X->n + 15) / 16;
    int8_t *bb = (int8_t *)scratch;
    int32_t *cb = (int32_t *)(bb + nb32 * 512);
    float *tot = (float *)(cb + 256);
    qi8_tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    cfg.rows[0] = 16; cfg.colsb[0] = 64;     /* C: 16 rows x 16 int32 */
    cfg.rows[1] = 16; cfg.colsb[1] = 32;     /* A: 16 rows x one 32-block of q */
    cfg.rows[2] = 8;  cfg.colsb[2] = 64;     /* B: 8 rows of 4 inputs x 16 columns */
    _tile_loadconfig(&cfg);
    for (int64_t rc = 0; rc < nrt; rc += QI8_AMX_RCH) {
        int64_t rce = rc + QI8_AMX_RCH < nrt ? rc + QI8_AMX_RCH : nrt;
        for (int64_t t = t0; t < t1; t++) {
            amx_units(T, t, bb);
            int64_t nl = T->d_out - 16 * t;
            __mmask16 m = nl >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nl) - 1);
            for (int64_t rt = rc; rt < rce; rt++) {
                if (T->spb == 1) amx_rows(T, X, xk, dk, y, t, rt, bb, cb, tot, m, 1);
                else amx_rows(T, X, xk, dk, y, t, rt, bb, cb, tot, m, 0);
            }
        }
    }
    _tile_release();
}
#else
int fdl_qi8_amx_ok(void) { return 0; }
#endif

int64_t fdl_qi8_amx_scratch(int64_t nb32) { return nb32 * 512 + 256 * 4 + 256 * 4 + 64; }
