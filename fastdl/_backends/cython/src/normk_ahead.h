/* Software prefetch for the intrinsic reductions (normk_sums_simd.h,
 * normk_sumsq_simd.h): both inputs are requested AHEAD_BYTES ahead, since
 * hardware prefetchers restart at every page (~25% faster on the project's
 * machines). */
#ifndef FASTDL_NORMK_AHEAD_H
#define FASTDL_NORMK_AHEAD_H
#define AHEAD_BYTES 2048
#define AHEAD(p) _mm_prefetch((const char *)(p) + AHEAD_BYTES, _MM_HINT_T0)
/* every 64-byte line of L elements of T from p */
#define AHEAD_LINES(p, L) \
    for (int p_ = 0; p_ < (L) * (int)sizeof(T); p_ += 64) AHEAD((const char *)(p) + p_)
#endif
