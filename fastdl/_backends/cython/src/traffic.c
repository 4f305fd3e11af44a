#include "traffic.h"
#include "simd.h"

/* OR of every 8-byte word: forces a full read that the compiler cannot drop. */
static uint64_t read_scalar(const unsigned char *p, int64_t nbytes) {
    const uint64_t *w = (const uint64_t *)p;
    int64_t n = nbytes / 8;
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) { a0 |= w[i]; a1 |= w[i + 1]; a2 |= w[i + 2]; a3 |= w[i + 3]; }
    for (; i < n; i++) a0 |= w[i];
    for (int64_t b = n * 8; b < nbytes; b++) a1 |= p[b];
    return a0 | a1 | a2 | a3;
}

#if FDL_HAVE_AVX2_TARGET
FDL_TARGET_AVX2 static uint64_t read_avx2(const unsigned char *p, int64_t nbytes) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 128 <= nbytes; i += 128) {
        a0 = _mm256_or_si256(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_or_si256(a1, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_or_si256(a2, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_or_si256(a3, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
    }
    __m256i a = _mm256_or_si256(_mm256_or_si256(a0, a1), _mm256_or_si256(a2, a3));
    uint64_t out[4];
    _mm256_storeu_si256((__m256i *)out, a);
    return out[0] | out[1] | out[2] | out[3] | read_scalar(p + i, nbytes - i);
}
#endif

uint64_t fdl_read_bytes(const unsigned char *p, int64_t nbytes, int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX2) return read_avx2(p, nbytes);
#endif
    (void)level;
    return read_scalar(p, nbytes);
}
