/* float16 decoding kernels (uint16_t bit patterns, computed in float32),
 * included once per ISA after that ISA's float32 table.
 *
 * Rows are converted to float32 in pieces into a stack buffer that stays in
 * L1 and fed to the float32 kernels of the same ISA (DK16_F32, a table): the
 * results are bitwise those of the float32 kernels on the converted row (the
 * conversion is exact), so the float32 twins' equality carries over.
 * Expects ATTR, DK16(name) (suffixes the ISA), DK16_F32 and the ISA's
 * conversions DK16_H2F / DK16_F2H (f16.h: same bits in every ISA). */

#define DK16_PIECE 1024

static ATTR int64_t DK16(scan_from)(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                                    const uint16_t *x, int64_t n, float sub, float add,
                                    int has_add, int64_t base) {
    float buf[DK16_PIECE];
    for (int64_t lo = 0; lo < n; lo += DK16_PIECE) {
        if (size == k && hk[0] == UINT32_MAX) break;    /* a NaN root: nothing enters */
        int64_t ln = n - lo < DK16_PIECE ? n - lo : DK16_PIECE;
        DK16_H2F(x + lo, buf, ln);
        size = has_add ? DK16_F32.scan_add(hk, hi, size, k, buf, ln, sub, add, base + lo)
                       : DK16_F32.scan(hk, hi, size, k, buf, ln, base + lo);
    }
    return size;
}

static ATTR int64_t DK16(scan)(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                               const uint16_t *x, int64_t n, int64_t base) {
    return DK16(scan_from)(hk, hi, size, k, x, n, 0.0f, 0.0f, 0, base);
}

static ATTR int64_t DK16(scan_add)(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                                   const uint16_t *x, int64_t n, float sub, float add,
                                   int64_t base) {
    return DK16(scan_from)(hk, hi, size, k, x, n, sub, add, 1, base);
}

static ATTR void DK16(stats)(const uint16_t *x, int64_t n, double *m, double *s, int *bad) {
    float buf[FDL_DK_CHUNK];
    if (n > FDL_DK_CHUNK) {         /* outside the contract: refuse rather than overflow */
        *m = NAN;
        *s = 0.0;
        *bad = 1;
        return;
    }
    DK16_H2F(x, buf, n);
    DK16_F32.stats(buf, n, m, s, bad);
}

/* y = float16((x - m) - l), computed in float32 and rounded once */
static ATTR void DK16(sub)(const uint16_t *x, uint16_t *y, int64_t n, float m, float l) {
    float buf[DK16_PIECE];
    for (int64_t lo = 0; lo < n; lo += DK16_PIECE) {
        int64_t ln = n - lo < DK16_PIECE ? n - lo : DK16_PIECE;
        DK16_H2F(x + lo, buf, ln);
        for (int64_t j = 0; j < ln; j++) buf[j] = (buf[j] - m) - l;
        DK16_F2H(buf, y + lo, ln);
    }
}

#undef DK16_PIECE
