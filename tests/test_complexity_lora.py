"""LoRA / QLoRA counts (fastdl.complexity) against hand-worked cases, against the
operations a small NumPy layer really does (counted by a wrapper, its gradients checked
by finite differences), and against the usual O() terms."""
import collections
import itertools
import math

import numpy as np
import pytest

from fastdl import complexity as cx
from fastdl.quant import quantize


# -- hand-worked: n=2, d=3, h=2, r=1, adapters on q, k, v, f -------------------------------

def test_forward_worked_by_hand():
    mha = cx.lora_mha_macs(2, 3, 2, 1)
    assert mha.base == 3 * 2 * (2 * 3 * 3)          # Q, K, V of 2 heads, each n·d·d = 18
    assert mha.adapter == 3 * 2 * (2 * 3 * 1 + 2 * 1 * 3)   # per head (H A) then (HA) Bᵀ
    assert mha.scale == 3 * 2 * (2 * 1)
    assert mha.scores == mha.pv == 2 * (2 * 2 * 3)  # 2 heads × n·n·d
    assert mha.score_scale == mha.softmax_exps == 2 * 4
    assert mha.out_proj == 2 * (2 * 3) * 3          # (n × h·d) @ (h·d × d)
    assert mha.total == 108 + 72 + 24 + 24 + 36 == 264
    ffn = cx.lora_ffn_macs(2, 3, 1)
    assert (ffn.base, ffn.adapter, ffn.scale, ffn.total) == (18, 12, 2, 30)
    assert cx.lora_layer_macs(2, 3, 2, 1).total == 294
    causal = cx.lora_mha_macs(2, 3, 2, 1, causal=True)   # 3 of the 4 entries kept per head
    assert (causal.scores, causal.softmax_exps, causal.pv) == (18, 6, 18)
    assert cx.lora_mha_macs(2, 3, 2, 1, batch=3).as_dict() == {
        k: 3 * v for k, v in mha.as_dict().items()}


def test_backward_worked_by_hand():
    b = cx.lora_backward_macs(2, 3, 2, 1)
    # one adapted (3 -> 3) projection of 2 rows: dx = dy Wᵀ 18, dy B 6, dA 6, dB 6,
    # g Aᵀ 6, scale n·r + d_out·r = 5; there are 6 in MHA (3 per head) and 1 in LFFN
    assert b.base_dx == 7 * 18 and b.adapter == 7 * 18 and b.adapter_dx == 7 * 6
    assert b.scale == 7 * 5
    assert b.dv == b.dp == b.dq == b.dk == 2 * (2 * 2 * 3)
    assert b.softmax == b.score_scale == 8
    assert b.out_proj_dx == 2 * 3 * 2 * 3
    assert b.total == 126 + 126 + 42 + 4 * 24 + 36
    no_dx = cx.lora_backward_macs(2, 3, 2, 1, need_dx=False)
    assert no_dx.base_dx == 18 and no_dx.adapter_dx == 6     # only the LFFN's dx remains
    assert cx.lora_backward_macs(2, 3, 2, 1, stage="ffn", need_dx=False).as_dict() == {
        **cx.LoRABackwardCounts().as_dict(), "adapter": 18, "scale": 5, "total": 18}


def test_parameters_and_memory_worked_by_hand():
    assert cx.lora_trainable_params(3, 2, 1, stage="ffn") == 2 * 3 * 1
    assert cx.lora_trainable_params(3, 2, 1, stage="mha") == 6 * 2 * 3 * 1
    assert cx.lora_trainable_params(3, 2, 1, targets=("q", "o")) == 2 * 2 * 3 + (6 + 3)
    assert cx.qlora_dequant_elements(3, 2, stage="mha") == 3 * 2 * 9 + 6 * 3 == 72
    assert cx.qlora_dequant_elements(3, 2, stage="ffn") == 9
    assert cx.qlora_dequant_elements(3, 2, backward=True, need_dx=False) == 18 + 9
    assert cx.frozen_weight_bits(3, 2, stage="ffn") == 32 * 9
    # 4-bit, one block per column: 3 columns × 2 bytes of codes + 3 float32 scales
    assert cx.frozen_weight_bits(3, 2, stage="ffn", quant={"bits": 4}) == 8 * (3 * 2 + 3 * 4)


# -- brute force: a small layer whose every multiply is counted -------------------------------

class Counting:
    """NumPy operations that count what they do, under the names of the count fields."""

    def __init__(self):
        self.n = collections.Counter()

    def mm(self, key, a, b):
        self.n[key] += a.shape[0] * a.shape[1] * b.shape[1]
        return a @ b

    def mul(self, key, a, s):
        self.n[key] += a.size
        return a * s

    def exp(self, key, a):
        self.n[key] += a.size
        return np.exp(a)


def make_layer(rng, d, h, r, targets):
    w = {"q": rng.standard_normal((h, d, d)) / d, "k": rng.standard_normal((h, d, d)) / d,
         "v": rng.standard_normal((h, d, d)) / d, "o": rng.standard_normal((h * d, d)) / d,
         "f": rng.standard_normal((d, d)) / d}
    ad = {}
    for t in targets:
        shapes = {"o": (h * d, d)}.get(t, (d, d))
        for i in (range(h) if t in "qkv" else [None]):
            ad[(t, i)] = (rng.standard_normal((shapes[0], r)), rng.standard_normal((shapes[1], r)))
    return w, ad


def proj(c, x, W, ab, s, base_key):
    y = c.mm(base_key, x, W)
    if ab is None:
        return y, None
    xa = c.mm("adapter", x, ab[0])
    return y + c.mm("adapter", c.mul("scale", xa, s), ab[1].T), xa


def proj_bwd(c, dy, x, xa, W, ab, s, need_dx, grads, key, dx_key="base_dx"):
    dx = c.mm(dx_key, dy, W.T) if need_dx else None
    if ab is not None:
        g = c.mul("scale", c.mm("adapter", dy, ab[1]), s)
        grads[key] = (c.mm("adapter", x.T, g), c.mul("scale", c.mm("adapter", dy.T, xa), s))
        if need_dx:
            dx = dx + c.mm("adapter_dx", g, ab[0].T)
    return dx


def layer_forward(c, H, w, ad, causal, s=0.5):
    """H (batch, n, d): the projections run on the batch·n rows at once, attention per
    sequence, as the library's layer does."""
    bt, n, d = H.shape
    h = w["q"].shape[0]
    X = H.reshape(bt * n, d)
    cache = {"X": X, "heads": []}
    outs = []
    for i in range(h):
        qkv, xas = [], []
        for t in "qkv":
            y, xa = proj(c, X, w[t][i], ad.get((t, i)), s, "base")
            qkv.append(y)
            xas.append(xa)
        rows, o = [], np.zeros((bt * n, d))
        for b, j in np.ndindex(bt, n):       # only the kept keys are touched
            Q, K, V = (a[b * n:(b + 1) * n] for a in qkv)
            k = j + 1 if causal else n
            sc = c.mul("score_scale", c.mm("scores", Q[j:j + 1], K[:k].T), 1 / math.sqrt(d))
            e = c.exp("softmax_exps", sc - sc.max())
            p = e / e.sum()
            o[b * n + j] = c.mm("pv", p, V[:k])[0]
            rows.append(p)
        outs.append(o)
        cache["heads"].append((qkv, xas, rows))
    concat = np.concatenate(outs, axis=1)
    m, xa_o = proj(c, concat, w["o"], ad.get(("o", None)), s, "out_proj")
    y, xa_f = proj(c, m, w["f"], ad.get(("f", None)), s, "base")
    cache.update(concat=concat, xa_o=xa_o, m=m, xa_f=xa_f, s=s, shape=H.shape)
    return y.reshape(H.shape), cache


def layer_backward(c, dy, w, ad, cache, need_dx=True):
    s, X = cache["s"], cache["X"]
    bt, n, d = cache["shape"]
    grads = {}
    dm = proj_bwd(c, dy.reshape(bt * n, d), cache["m"], cache["xa_f"], w["f"],
                  ad.get(("f", None)), s, True, grads, ("f", None))
    dcat = proj_bwd(c, dm, cache["concat"], cache["xa_o"], w["o"], ad.get(("o", None)), s,
                    True, grads, ("o", None), dx_key="out_proj_dx")
    dX = np.zeros((bt * n, d)) if need_dx else None
    for i, (qkv, xas, rows) in enumerate(cache["heads"]):
        do = dcat[:, i * d:(i + 1) * d]
        dqkv = [np.zeros((bt * n, d)) for _ in range(3)]
        for (b, j), p in zip(np.ndindex(bt, n), rows):
            Q, K, V = (a[b * n:(b + 1) * n] for a in qkv)
            dQ, dK, dV = (a[b * n:(b + 1) * n] for a in dqkv)
            k = p.shape[1]
            dV[:k] += c.mm("dv", p.T, do[b * n + j:b * n + j + 1])
            dp = c.mm("dp", do[b * n + j:b * n + j + 1], V[:k].T)
            c.n["softmax"] += k
            ds = c.mul("score_scale", p * (dp - (dp * p).sum()), 1 / math.sqrt(d))
            dQ[j] = c.mm("dq", ds, K[:k])[0]
            dK[:k] += c.mm("dk", ds.T, Q[j:j + 1])
        for t, dg, xa in zip("qkv", dqkv, xas):
            dx = proj_bwd(c, dg, X, xa, w[t][i], ad.get((t, i)), s, need_dx, grads, (t, i))
            if need_dx:
                dX += dx
    return (dX.reshape(cache["shape"]) if need_dx else None), grads


CASES = [(2, 3, 2, 1, ("q", "k", "v", "f"), False), (2, 3, 2, 1, ("q", "k", "v", "f"), True),
         (4, 5, 3, 2, ("q", "v"), True), (3, 4, 1, 4, ("k", "o"), False),
         (5, 2, 2, 1, (), True), (1, 6, 2, 3, ("q", "k", "v", "o", "f"), False)]


@pytest.mark.parametrize("n,d,h,r,targets,causal", CASES)
def test_counts_equal_the_operations_of_a_counted_layer(n, d, h, r, targets, causal):
    rng = np.random.default_rng(n * 100 + d * 10 + h)
    w, ad = make_layer(rng, d, h, r, targets)
    for batch in (1, 3):
        fwd, bwd, bwd_nodx = Counting(), Counting(), Counting()
        H = rng.standard_normal((batch, n, d))
        _, cache = layer_forward(fwd, H, w, ad, causal)
        layer_backward(bwd, rng.standard_normal(H.shape), w, ad, cache)
        layer_backward(bwd_nodx, rng.standard_normal(H.shape), w, ad, cache, need_dx=False)
        kw = dict(targets=targets, causal=causal, batch=batch)
        want = cx.lora_layer_macs(n, d, h, r, **kw).as_dict()
        assert {k: fwd.n[k] for k in want if k != "total"} == {
            k: v for k, v in want.items() if k != "total"}
        for counter, need_dx in ((bwd, True), (bwd_nodx, False)):
            want = cx.lora_backward_macs(n, d, h, r, need_dx=need_dx, **kw).as_dict()
            got = {k: counter.n[k] for k in want if k != "total"}
            assert got == {k: v for k, v in want.items() if k != "total"}, (need_dx, got, want)


@pytest.mark.parametrize("causal", [False, True])
def test_the_counted_layer_computes_the_layer_and_its_gradients(causal):
    """The counted layer is the real one: its output against a dense masked softmax, its
    gradients against central differences, so the operations counted are the right ones."""
    rng = np.random.default_rng(7)
    n, d, h, r = 3, 3, 2, 2
    targets = ("q", "k", "v", "o", "f")
    w, ad = make_layer(rng, d, h, r, targets)
    H, G = rng.standard_normal((2, n, d)), rng.standard_normal((2, n, d))
    c = Counting()
    y, cache = layer_forward(c, H, w, ad, causal)

    def dense(H, ad):
        return np.stack([dense1(x, ad) for x in H])

    def dense1(H, ad):
        heads = []
        for i in range(h):
            Q, K, V = (H @ w[t][i] + 0.5 * (H @ ad[(t, i)][0]) @ ad[(t, i)][1].T for t in "qkv")
            S = Q @ K.T / math.sqrt(d)
            if causal:
                S = np.where(np.tril(np.ones((n, n), bool)), S, -np.inf)
            P = np.exp(S - S.max(axis=1, keepdims=True))
            heads.append(P / P.sum(axis=1, keepdims=True) @ V)
        cat = np.concatenate(heads, axis=1)
        m = cat @ w["o"] + 0.5 * (cat @ ad[("o", None)][0]) @ ad[("o", None)][1].T
        return m @ w["f"] + 0.5 * (m @ ad[("f", None)][0]) @ ad[("f", None)][1].T

    np.testing.assert_allclose(y, dense(H, ad), rtol=1e-12, atol=1e-12)
    dH, grads = layer_backward(c, G, w, ad, cache)
    eps = 1e-6
    num = np.zeros_like(H)
    for idx in np.ndindex(H.shape):
        e = np.zeros_like(H)
        e[idx] = eps
        num[idx] = np.sum(G * (dense(H + e, ad) - dense(H - e, ad))) / (2 * eps)
    np.testing.assert_allclose(dH, num, rtol=1e-6, atol=1e-8)
    for key, (A, B) in ad.items():
        for which, M in ((0, A), (1, B)):
            numM = np.zeros_like(M)
            for idx in np.ndindex(M.shape):
                plus, minus = dict(ad), dict(ad)
                Mp, Mm = M.copy(), M.copy()
                Mp[idx] += eps
                Mm[idx] -= eps
                plus[key] = (Mp, B) if which == 0 else (A, Mp)
                minus[key] = (Mm, B) if which == 0 else (A, Mm)
                numM[idx] = np.sum(G * (dense(H, plus) - dense(H, minus))) / (2 * eps)
            np.testing.assert_allclose(grads[key][which], numM, rtol=1e-6, atol=1e-8)


def test_linear_counts_equal_a_counted_projection():
    rng = np.random.default_rng(1)
    n, d_in, d_out, r = 4, 5, 3, 2
    x, W = rng.standard_normal((n, d_in)), rng.standard_normal((d_in, d_out))
    ab = (rng.standard_normal((d_in, r)), rng.standard_normal((d_out, r)))
    c = Counting()
    _, xa = proj(c, x, W, ab, 2.0, "base")
    assert cx.lora_linear_macs(n, d_in, d_out, r).as_dict() == {
        **cx.LoRAForwardCounts().as_dict(), **c.n, "total": c.n["base"] + c.n["adapter"]}
    for need_dx in (True, False):
        c = Counting()
        proj_bwd(c, rng.standard_normal((n, d_out)), x, xa, W, ab, 2.0, need_dx, {}, "k")
        want = cx.lora_linear_backward_macs(n, d_in, d_out, r, need_dx=need_dx).as_dict()
        assert {k: c.n[k] for k in want if k != "total"} == {
            k: v for k, v in want.items() if k != "total"}


def test_quantized_memory_is_what_fastdl_stores():
    rng = np.random.default_rng(2)
    d, h = 96, 2
    specs = [dict(bits=4, scheme="nf4", block_size=64, double_quant=True),
             dict(bits=4, scheme="absmax", block_size=64), dict(bits=8, scheme="absmax",
                                                                block_size=None),
             dict(bits=3, scheme="absmax", block_size=32)]
    for spec in specs:
        stored = {"ffn": quantize(rng.standard_normal((d, d)), **spec).nbytes}
        # block-wise: each projection's heads side by side; one scale: a matrix per head
        heads = [(d, d)] * (3 * h) if spec["block_size"] is None else [(d, h * d)] * 3
        stored["mha"] = (sum(quantize(rng.standard_normal(s), **spec).nbytes for s in heads)
                         + quantize(rng.standard_normal((h * d, d)), **spec).nbytes)
        for stage, nbytes in stored.items():
            assert cx.frozen_weight_bits(d, h, stage=stage, quant=spec) == 8 * nbytes
        assert cx.frozen_weight_bits(d, h, quant=spec) == 8 * (stored["ffn"] + stored["mha"])


# -- against the O() terms -------------------------------------------------------------------

def test_the_loose_places_of_the_o_terms():
    for n, d, h, r in itertools.product((1, 16, 128), (8, 64), (1, 4, 12), (1, 8)):
        if r > d:
            continue
        mha = cx.lora_mha_macs(n, d, h, r)
        assert mha.adapter == 6 * h * (n * d * r)       # per head, not n·d·r
        assert cx.qlora_dequant_elements(d, h, stage="mha") == h * (4 * d * d)   # not 4d²
        doc = cx.document_terms(n, d, h, r)
        assert doc["lora_mha_time"][1] <= mha.total <= max(4, 6 * h) * doc["lora_mha_time"][1]
        assert mha.base + mha.out_proj == 4 * h * n * d * d
        assert mha.scores + mha.pv == 2 * h * n * n * d
        # the dequantization is one pass over the weights against n rows of products
        assert n * cx.qlora_dequant_elements(d, h, stage="mha") == mha.base + mha.out_proj
        assert n * cx.qlora_dequant_elements(d, h, stage="ffn") == cx.lora_ffn_macs(n, d, r).base
        assert cx.lora_trainable_params(d, h, r, stage="mha") == doc["mha_trainable"][1]
        assert cx.lora_trainable_params(d, h, r, stage="ffn") == doc["ffn_trainable"][1]


def test_growth_rates():
    base = cx.lora_ffn_macs(64, 256, 8)
    assert cx.lora_ffn_macs(128, 256, 8).total == 2 * base.total          # linear in n
    assert cx.lora_ffn_macs(64, 256, 16).adapter == 2 * base.adapter      # linear in r
    a, b = cx.lora_mha_macs(64, 32, 2, 4), cx.lora_mha_macs(128, 32, 2, 4)
    assert b.scores == 4 * a.scores and b.softmax_exps == 4 * a.softmax_exps   # n²
    assert cx.lora_trainable_params(512, 4, 16) == 2 * cx.lora_trainable_params(512, 4, 8)
    nf4 = {"bits": 4, "block_size": 64, "double_quant": True}
    ratio = cx.frozen_weight_bits(4096, 4, quant=nf4) / cx.frozen_weight_bits(4096, 4)
    assert 4 / 32 < ratio <= 0.135                 # codes + scales, about 4.127 bits a weight


def test_lora_table_rows():
    rows = cx.lora_table(128, 1024, 4, 8)
    names = [r[0] for r in rows]
    assert len(set(names)) == len(rows) == 10
    by = {r[0]: r for r in rows}
    mha = by["LoRA MHA time (MACs)"]
    assert mha[1] == cx.lora_mha_macs(128, 1024, 4, 8).total
    assert mha[2] == "O(hnd² + ndr + hn²d)" and "not n·d·r" in mha[4]
    dq = by["QLoRA MHA dequantized weights"]
    assert dq[1] == 4 * dq[3] and "h = 4" in dq[4]
    assert by["MHA trainable parameters"][1] == by["MHA trainable parameters"][3]
    for r in rows:
        assert isinstance(r[1], int) and isinstance(r[3], int) and r[1] >= r[3]


# -- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("call,exc,match", [
    (lambda: cx.lora_mha_macs(0, 4, 2, 1), ValueError, "n must be an int >= 1, got 0"),
    (lambda: cx.lora_mha_macs(2, -4, 2, 1), ValueError, "d must be"),
    (lambda: cx.lora_mha_macs(2, 4, True, 1), TypeError, "h must be an int"),
    (lambda: cx.lora_mha_macs(2, 4, 2, 5), ValueError, "r must be <= d = 4, got r=5"),
    (lambda: cx.lora_ffn_macs(2, 4, 0), ValueError, "r must be an int >= 1"),
    (lambda: cx.lora_ffn_macs(2, 4, 1.0), TypeError, "r must be an int"),
    (lambda: cx.lora_mha_macs(2, 4, 2, 1, targets=("q", "x")), ValueError, "targets"),
    (lambda: cx.lora_mha_macs(2, 4, 2, 1, targets=("q", "q")), ValueError, "distinct"),
    (lambda: cx.lora_mha_macs(2, 4, 2, 1, targets="qkv"), TypeError, "tuple of names"),
    (lambda: cx.lora_mha_macs(2, 4, 2, 1, causal=1), TypeError, "causal must be a bool"),
    (lambda: cx.lora_mha_macs(2, 4, 2, 1, batch=0), ValueError, "batch"),
    (lambda: cx.lora_backward_macs(2, 4, 2, 1, stage="attn"), ValueError, "stage must be one of"),
    (lambda: cx.lora_linear_macs(2, 4, 3, 4), ValueError, r"min\(d_in, d_out\) = 3"),
    (lambda: cx.frozen_weight_bits(4, 2, quant={"bits": 9}), ValueError, "2..8"),
    (lambda: cx.frozen_weight_bits(4, 2, quant={"block_size": 64}), TypeError, "'bits'"),
    (lambda: cx.frozen_weight_bits(4, 2, quant={"bits": 4, "block": 64}), ValueError,
     "unknown keys"),
    (lambda: cx.frozen_weight_bits(4, 2, quant={"bits": 4, "block_size": None,
                                                "double_quant": True}), ValueError, "needs"),
    (lambda: cx.qlora_dequant_elements(4, 0), ValueError, "h must be"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
