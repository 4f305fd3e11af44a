# The decoding kernels' C API (src/decodek.h): one function table per dtype.
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t

cdef extern from "decodek.h" nogil:
    int FDL_DK_CHUNK
    ctypedef struct fdl_dk_f32:
        int64_t (*scan)(uint32_t *hk, int64_t *hi, int64_t size, int64_t k, const float *x,
                        int64_t n, int64_t base) noexcept nogil
        int64_t (*scan_add)(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                            const float *x, int64_t n, float sub, float add, int64_t base) noexcept nogil
        int64_t (*merge)(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                         const uint32_t *sk, const int64_t *si, int64_t n) noexcept nogil
        void (*sort)(uint32_t *hk, int64_t *hi, int64_t size) noexcept nogil
        void (*stats)(const float *x, int64_t n, double *m, double *s, int *bad) noexcept nogil
        void (*sub)(const float *x, float *y, int64_t n, float m, float l) noexcept nogil
        void (*exp)(const float *x, float *y, int64_t n) noexcept nogil
    ctypedef struct fdl_dk_f64:
        int64_t (*scan)(uint64_t *hk, int64_t *hi, int64_t size, int64_t k, const double *x,
                        int64_t n, int64_t base) noexcept nogil
        int64_t (*scan_add)(uint64_t *hk, int64_t *hi, int64_t size, int64_t k,
                            const double *x, int64_t n, double sub, double add, int64_t base) noexcept nogil
        int64_t (*merge)(uint64_t *hk, int64_t *hi, int64_t size, int64_t k,
                         const uint64_t *sk, const int64_t *si, int64_t n) noexcept nogil
        void (*sort)(uint64_t *hk, int64_t *hi, int64_t size) noexcept nogil
        void (*stats)(const double *x, int64_t n, double *m, double *s, int *bad) noexcept nogil
        void (*sub)(const double *x, double *y, int64_t n, double m, double l) noexcept nogil
        void (*exp)(const double *x, double *y, int64_t n) noexcept nogil
    ctypedef struct fdl_dk_f16:
        int64_t (*scan)(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                        const uint16_t *x, int64_t n, int64_t base) noexcept nogil
        int64_t (*scan_add)(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                            const uint16_t *x, int64_t n, float sub, float add, int64_t base) noexcept nogil
        int64_t (*merge)(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                         const uint32_t *sk, const int64_t *si, int64_t n) noexcept nogil
        void (*sort)(uint32_t *hk, int64_t *hi, int64_t size) noexcept nogil
        void (*stats)(const uint16_t *x, int64_t n, double *m, double *s, int *bad) noexcept nogil
        void (*sub)(const uint16_t *x, uint16_t *y, int64_t n, float m, float l) noexcept nogil
        void (*h2f)(const uint16_t *x, float *y, int64_t n) noexcept nogil
        void (*f2h)(const float *x, uint16_t *y, int64_t n) noexcept nogil
    const fdl_dk_f32 *fdl_dk_f32_table(int level)
    const fdl_dk_f64 *fdl_dk_f64_table(int level)
    const fdl_dk_f16 *fdl_dk_f16_table(int level)
    void fdl_dk_fold_step(double *M, double *S, int *bad, double m, double s, int b)
    double fdl_dk_fold_end(double M, double S, int bad, double *pm)
    double fdl_dk_fold(const double *m, const double *s, const int *bad, int64_t nch,
                       double *pm)

cdef extern from "f16.h" nogil:
    float fdl_h2f(uint16_t h)
