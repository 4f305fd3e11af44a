/* Intrinsic overrides of MOM(blocks) and MOM(coldev_strip) (moments_body.h,
 * their scalar twins), written once over a vector type and included by
 * moments_avx2.c / moments_avx512.c once per dtype.  Expects T, VT (vector of
 * W elements of T), NV (vectors per lane array: NL = NV * W is the body's lane
 * count, the same for every ISA), the one-instruction helpers V_LOAD, V_STORE,
 * V_ADD, V_SUB, V_MUL, V_SET1, V_ZERO, V_PREFETCH, the lane trees RARR (of an
 * array, moments_simd.h) and RVEC (the same tree on NV vectors), ATTR, and the
 * names BLOCKS_FN, STRIP_FN.  Lane k of each accumulator holds the same terms
 * in the same order as lane k of the twin; multiply and add stay separate
 * (fp-contract off, no FMA), so the results agree bitwise. */

/* Consecutive blocks, software-pipelined: pass 1 of block b+1 (streaming from
 * memory) runs in the same loop as pass 2 of block b (from L1), so memory
 * traffic never pauses for the compute. */
ATTR void BLOCKS_FN(const T *x, int64_t n, int64_t block, double *mean, double *m2) {
    enum { NLV = NV * W };
    if (n <= 0) return;
    int64_t nb = (n + block - 1) / block, i;
    VT a[NV], s[NV], c[NV];
    T acc[NLV], sq[NLV], dv[NLV];
    int64_t lc = n < block ? n : block, lcv = lc & ~(int64_t)(NLV - 1);
    for (int j = 0; j < NV; j++) a[j] = V_ZERO();
    for (i = 0; i < lcv; i += NLV)
        for (int j = 0; j < NV; j++) a[j] = V_ADD(a[j], V_LOAD(x + i + W * j));
    if (lc != lcv) {
        for (int j = 0; j < NV; j++) V_STORE(acc + W * j, a[j]);
        for (; i < lc; i++) acc[i & (NLV - 1)] += x[i];
    }
    for (int64_t b = 0; b < nb; b++) {
        const T *cur = x + b * block, *nxt = cur + block;
        int64_t rest = n - (b + 1) * block;
        int64_t ln = b + 1 < nb ? (rest < block ? rest : block) : 0;
        int64_t lnv = ln & ~(int64_t)(NLV - 1), both = lcv < lnv ? lcv : lnv;
        T K = (T)((lc == lcv ? RVEC(a) : RARR(acc)) / (double)lc);
        VT kv = V_SET1(K);
        for (int j = 0; j < NV; j++) a[j] = s[j] = c[j] = V_ZERO();
        for (i = 0; i < both; i += NLV) {
            for (int p = 0; p < NLV * (int)sizeof(T); p += 64)
                V_PREFETCH((const char *)(nxt + i) + FDL_MOM_PF_BYTES + p);
            for (int j = 0; j < NV; j++) {
                a[j] = V_ADD(a[j], V_LOAD(nxt + i + W * j));
                VT d = V_SUB(V_LOAD(cur + i + W * j), kv);
                s[j] = V_ADD(s[j], V_MUL(d, d));
                c[j] = V_ADD(c[j], d);
            }
        }
        for (int64_t k = i; k < lcv; k += NLV)
            for (int j = 0; j < NV; j++) {
                VT d = V_SUB(V_LOAD(cur + k + W * j), kv);
                s[j] = V_ADD(s[j], V_MUL(d, d));
                c[j] = V_ADD(c[j], d);
            }
        for (int64_t k = i; k < lnv; k += NLV)
            for (int j = 0; j < NV; j++) a[j] = V_ADD(a[j], V_LOAD(nxt + k + W * j));
        double s1, s2;
        if (lc == lcv) {
            s1 = RVEC(c);
            s2 = RVEC(s);
        } else {
            for (int j = 0; j < NV; j++) {
                V_STORE(sq + W * j, s[j]);
                V_STORE(dv + W * j, c[j]);
            }
            for (int64_t k = lcv; k < lc; k++) {
                T d = cur[k] - K;
                sq[k & (NLV - 1)] += d * d;
                dv[k & (NLV - 1)] += d;
            }
            s1 = RARR(dv);
            s2 = RARR(sq);
        }
        mean[b] = fdl_mom_shifted_mean((double)K, s1, lc);
        fdl_mom_finish(s2, s1, lc, &m2[b]);
        if (ln != lnv) {
            for (int j = 0; j < NV; j++) V_STORE(acc + W * j, a[j]);
            for (i = lnv; i < ln; i++) acc[i & (NLV - 1)] += nxt[i];
        }
        lc = ln;
        lcv = lnv;
    }
}

/* Strips of NV vectors of columns held in registers over all rows. */
ATTR void STRIP_FN(const T *x, int64_t rows, int64_t L, const T *kc, T *sq, T *dv) {
    int64_t j = 0;
    for (; j + NV * W <= L; j += NV * W) {
        VT k4[NV], s[NV], c[NV];
        for (int k = 0; k < NV; k++) {
            k4[k] = V_LOAD(kc + j + W * k);
            s[k] = V_LOAD(sq + j + W * k);
            c[k] = V_LOAD(dv + j + W * k);
        }
        for (int64_t r = 0; r < rows; r++)
            for (int k = 0; k < NV; k++) {
                VT d = V_SUB(V_LOAD(x + r * L + j + W * k), k4[k]);
                s[k] = V_ADD(s[k], V_MUL(d, d));
                c[k] = V_ADD(c[k], d);
            }
        for (int k = 0; k < NV; k++) {
            V_STORE(sq + j + W * k, s[k]);
            V_STORE(dv + j + W * k, c[k]);
        }
    }
    for (; j < L; j++) {
        T s = sq[j], c = dv[j];
        for (int64_t r = 0; r < rows; r++) {
            T d = x[r * L + j] - kc[j];
            s += d * d;
            c += d;
        }
        sq[j] = s;
        dv[j] = c;
    }
}
