"""bitsandbytes 4-bit interop: QuantizedTensor.from_bnb / to_bnb.

The pure-NumPy tests build bitsandbytes' storage by hand from its definition (high
nibble first over the flattened (out, in) weight, float32 absmax per block, nested
absmax as map[code] * nested_absmax + offset); the peer tests run the installed
bitsandbytes (skipped where it is absent)."""
import json

import numpy as np
import pytest

from fastdl import _bnb
from fastdl.quant import NF4_CODEBOOK, QuantizedTensor, qmatmul, quantize
from fastdl.testing import rng_for
from hypothesis import given, settings, strategies as st


def packed_json(fields):
    return np.frombuffer(json.dumps(fields).encode(), np.uint8).copy()


def hand_state(out_f=2, in_f=64, bs=32, nested=False, seed="hand"):
    """(weight bytes, quant state dict, expected torch-layout float32 values)."""
    rng = rng_for(seed)
    n = out_f * in_f
    codes = rng.integers(0, 16, n).astype(np.uint8)
    padded = np.append(codes, np.uint8(7)) if n % 2 else codes
    weight = np.array([(padded[2 * k] << 4) | padded[2 * k + 1] for k in range(padded.size // 2)],
                      np.uint8).reshape(-1, 1)
    nb = -(-n // bs)
    fields = dict(quant_type="nf4", blocksize=bs, dtype="float32", shape=[out_f, in_f])
    if nested:
        nmap = np.linspace(-1, 1, 256).astype(np.float32)
        acodes = rng.integers(0, 256, nb).astype(np.uint8)
        nabs = (rng.random(-(-nb // 3)) + 0.25).astype(np.float32)
        off = 1.25
        scales = [np.float32(nmap[acodes[u]] * nabs[u // 3]) + np.float32(off) for u in range(nb)]
        state = {"weight.absmax": acodes, "weight.quant_map": NF4_CODEBOOK.copy(),
                 "weight.nested_absmax": nabs, "weight.nested_quant_map": nmap}
        fields.update(nested_blocksize=3, nested_dtype="float32", nested_offset=off)
    else:
        scales = (rng.random(nb) * 3).astype(np.float32)
        state = {"weight.absmax": scales.copy(), "weight.quant_map": NF4_CODEBOOK.copy()}
    state["weight.quant_state.bitsandbytes__nf4"] = packed_json(fields)
    expect = np.array([NF4_CODEBOOK[codes[i]] * np.float32(scales[i // bs]) for i in range(n)],
                      np.float32).reshape(out_f, in_f)
    return weight, state, expect


def bits(a):
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


# ---------------------------------------------------------------- pure NumPy

@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("shape,bs", [((2, 64), 32), ((3, 128), 64), ((1, 37), 64),
                                      ((1, 100), 32)])
def test_hand_packed_state_unpacks(backend, shape, bs, nested):
    weight, state, expect = hand_state(*shape, bs, nested)
    before = {k: v.copy() for k, v in state.items()}
    q = QuantizedTensor.from_bnb(weight, state)
    assert q.shape == (shape[1], shape[0]) and q.scheme == "nf4" and q.block_size == bs
    np.testing.assert_array_equal(bits(q.dequantize(backend=backend)), bits(expect.T))
    x = rng_for("x").standard_normal((3, shape[1])).astype(np.float32)
    np.testing.assert_allclose(qmatmul(x, q, backend=backend), x @ expect.T, rtol=1e-5,
                               atol=1e-5)
    assert all(np.array_equal(state[k], before[k]) for k in state)     # inputs untouched


@pytest.mark.parametrize("nested", [False, True])
def test_hand_state_exports_back_identical(nested):
    weight, state, _ = hand_state(3, 128, 64, nested)
    w2, s2 = QuantizedTensor.from_bnb(weight, state).to_bnb()
    np.testing.assert_array_equal(w2, weight)
    bare = {k.split(".", 1)[1]: v for k, v in state.items()}
    assert list(s2) == list(bare)
    for k in bare:
        np.testing.assert_array_equal(s2[k], bare[k])


def _nested_variant(nmap, nabs, off, seed):
    weight, state, _ = hand_state(4, 256, 32, nested=True, seed=seed)
    key = "weight.quant_state.bitsandbytes__nf4"
    f = json.loads(state[key].tobytes())
    f.update(nested_blocksize=32, nested_offset=off)
    state.update({key: packed_json(f), "weight.nested_quant_map": nmap,
                  "weight.nested_absmax": nabs})
    return weight, state


def test_reexport_through_a_map_out_of_order():
    nmap = rng_for("perm").permutation(np.linspace(-1, 1, 256).astype(np.float32))
    weight, state = _nested_variant(nmap, np.array([0.5], np.float32), 1.25, "perm")
    q = QuantizedTensor.from_bnb(weight, state)
    _, s2 = q.to_bnb()
    np.testing.assert_array_equal(s2["absmax"], state["weight.absmax"])


def test_reexport_where_codes_rebuild_the_same_scale():
    """With a large offset, the map's small entries times a small group absmax vanish in
    float32: several codes rebuild one scale; the export may pick another of them."""
    nmap = _bnb.dynamic_map()
    weight, state = _nested_variant(nmap, np.array([1e-3], np.float32), 100.0, "collide")
    codes = state["weight.absmax"]
    codes[:8] = np.arange(120, 128)          # entries of about -1e-6: all rebuild 100.0
    q = QuantizedTensor.from_bnb(weight, state)
    w2, s2 = q.to_bnb()
    rebuild = lambda c: _bnb._nested_scales(c, state["weight.nested_absmax"], nmap,
                                            np.float32(100.0), 32)
    assert (rebuild(codes[:8]) == np.float32(100.0)).all()
    np.testing.assert_array_equal(bits(rebuild(s2["absmax"])), bits(rebuild(codes)))
    assert (s2["absmax"][:8] != codes[:8]).any()     # some code was exchanged
    table = (nmap * np.float32(1e-3)).astype(np.float32) + np.float32(100.0)
    unique = np.array([(table == v).sum() == 1 for v in rebuild(codes)])
    assert 0 < unique.sum() < unique.size
    np.testing.assert_array_equal(s2["absmax"][unique], codes[unique])
    np.testing.assert_array_equal(decode_export(w2, s2), q.dequantize().T)


def test_copies_keep_the_bitsandbytes_state():
    import copy
    import pickle
    weight, state, _ = hand_state(3, 128, 64, nested=True)
    q = QuantizedTensor.from_bnb(weight, state)
    for other in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        w2, s2 = other.to_bnb()
        np.testing.assert_array_equal(w2, weight)
        np.testing.assert_array_equal(s2["absmax"], state["weight.absmax"])


def decode_export(weight, state):
    """bitsandbytes' dequantize_4bit, written from its definition."""
    f = json.loads(state["quant_state.bitsandbytes__nf4"].tobytes())
    out_f, in_f = f["shape"]
    n = out_f * in_f
    b = weight.reshape(-1)
    codes = np.stack([b >> 4, b & 15], axis=1).reshape(-1)[:n]
    absmax = state["absmax"]
    if "nested_absmax" in state:
        g = np.arange(absmax.size) // f["nested_blocksize"]
        absmax = (state["nested_quant_map"][absmax] * state["nested_absmax"][g]).astype(
            np.float32) + np.float32(f["nested_offset"])
    return (NF4_CODEBOOK[codes] * absmax[np.arange(n) // f["blocksize"]]).reshape(out_f, in_f)


@pytest.mark.parametrize("shape,bs", [((128, 5), 64), ((256, 3), 128), ((37, 1), 64),
                                      ((32, 4), 64)])
def test_export_of_fastdl_tensor(shape, bs):
    w = rng_for("export").standard_normal(shape).astype(np.float32)
    q = quantize(w, 4, scheme="nf4", block_size=bs)
    weight, state = q.to_bnb()
    assert weight.dtype == np.uint8 and weight.shape == ((w.size + 1) // 2, 1)
    np.testing.assert_array_equal(bits(decode_export(weight, state)), bits(q.dequantize().T))
    back = QuantizedTensor.from_bnb(weight, state)
    np.testing.assert_array_equal(back.data, q.data)
    np.testing.assert_array_equal(back.scales, q.scales)
    weight[:] = 0                           # the export is the caller's: q is unchanged
    state["absmax"][:] = 0
    np.testing.assert_array_equal(q.dequantize(), back.dequantize())


def test_double_quant_export_picks_nearest_dynamic_code():
    w = rng_for("dq").standard_normal((512, 40)).astype(np.float32) * np.float32(0.05)
    q = quantize(w, 4, scheme="nf4", block_size=64, double_quant=True)
    weight, state = q.to_bnb()              # None: the tensor's own choice (double quant)
    f = json.loads(state["quant_state.bitsandbytes__nf4"].tobytes())
    s = q.block_scales().reshape(-1)
    assert f["nested_blocksize"] == 256 and f["nested_dtype"] == "float32"
    assert np.float32(f["nested_offset"]) == np.float32(s.mean(dtype=np.float64))
    assert state["absmax"].dtype == np.uint8 and state["nested_absmax"].shape == (2,)
    nmap = state["nested_quant_map"]
    np.testing.assert_array_equal(nmap, _bnb.dynamic_map())
    t = ((s - np.float32(f["nested_offset"])) / state["nested_absmax"][np.arange(s.size) // 256])
    t = t.astype(np.float32).astype(np.float64)       # value / group absmax, in float32
    err = np.abs(nmap[state["absmax"]] - t)
    assert (err[:, None] <= np.abs(nmap[None, :].astype(np.float64) - t[:, None])).all()
    rebuilt = decode_export(weight, state)
    np.testing.assert_allclose(rebuilt, q.dequantize().T, rtol=0.02, atol=1e-6)
    exact_w, exact_s = q.to_bnb(double_quant=False)
    np.testing.assert_array_equal(exact_s["absmax"], s)
    np.testing.assert_array_equal(bits(decode_export(exact_w, exact_s)), bits(q.dequantize().T))


def test_dynamic_map_shape():
    m = _bnb.dynamic_map()
    assert m.dtype == np.float32 and m.shape == (256,) and (np.diff(m) > 0).all()
    assert m[-1] == 1 and 0 in m and m[0] == np.float32(-(1 - 0.9 / 128))
    assert m[127] == 0                     # 127 negatives, 0, 127 positives, 1
    np.testing.assert_array_equal(m[:127], -m[128:255][::-1])


def test_accepts_quant_state_object_and_default_state():
    weight, state, expect = hand_state()

    class FakeState:                         # the bitsandbytes QuantState protocol
        def as_dict(self, packed=False):
            assert packed
            return state

    class FakeParams(np.ndarray):
        pass

    q = QuantizedTensor.from_bnb(weight, FakeState())
    p = weight.view(FakeParams)
    p.quant_state = FakeState()
    np.testing.assert_array_equal(QuantizedTensor.from_bnb(p).dequantize(), expect.T)
    np.testing.assert_array_equal(q.dequantize(), expect.T)
    q2 = QuantizedTensor.from_bnb(weight.reshape(-1), {k.split(".", 1)[1]: v
                                                       for k, v in state.items()})
    np.testing.assert_array_equal(q2.dequantize(), expect.T)


def _mutate(name):
    weight, state, _ = hand_state(2, 64, 32)
    w = weight
    key = "weight.quant_state.bitsandbytes__nf4"
    f = json.loads(state[key].tobytes())
    if name == "absmax_dtype":
        state["weight.absmax"] = state["weight.absmax"].astype(np.float64)
    elif name == "absmax_shape":
        state["weight.absmax"] = state["weight.absmax"][:3]
    elif name == "quant_type":
        state.pop(key)
        f["quant_type"] = "int4"
        state["weight.quant_state.bitsandbytes__int4"] = packed_json(f)
    elif name == "json_mismatch":
        f["quant_type"] = "fp4"
        state[key] = packed_json(f)
    elif name == "fp4":
        state.pop(key)
        f["quant_type"] = "fp4"
        state["weight.quant_state.bitsandbytes__fp4"] = packed_json(f)
    elif name == "missing_absmax":
        state.pop("weight.absmax")
    elif name == "missing_json":
        state.pop(key)
    elif name == "missing_nested":
        state["weight.nested_absmax"] = np.ones(1, np.float32)
    elif name == "unknown_key":
        state["weight.bias"] = np.zeros(2, np.float32)
    elif name == "weight_size":
        w = weight[:-1]
    elif name == "weight_dtype":
        w = weight.astype(np.float32)
    elif name == "shape_json":
        f["shape"] = [2, 32]
        state[key] = packed_json(f)
    elif name == "rows_span":
        f["shape"], f["blocksize"] = [3, 96], 64
        state[key] = packed_json(f)
        w = np.zeros((144, 1), np.uint8)
        state["weight.absmax"] = np.ones(5, np.float32)
    elif name == "blocksize":
        f["blocksize"] = 48
        state[key] = packed_json(f)
    elif name == "dtype":
        f["dtype"] = "int8"
        state[key] = packed_json(f)
    elif name == "json_bytes":
        state[key] = np.frombuffer(b"{not json", np.uint8).copy()
    elif name == "quant_map":
        state["weight.quant_map"] = NF4_CODEBOOK[::-1].copy()
    elif name == "nonfinite":
        state["weight.absmax"][1] = np.inf
    elif name == "one_dim_shape":
        f["shape"] = [128]
        state[key] = packed_json(f)
    elif name == "not_a_dict":
        state = [1, 2]
    return w, state


BAD = {  # name: (exception, words the message must hold)
    "absmax_dtype": (TypeError, ["absmax", "float32", "float64"]),
    "absmax_shape": (ValueError, ["absmax", "(4,)", "(3,)"]),
    "quant_type": (ValueError, ["quant_type", "'nf4'", "'int4'"]),
    "json_mismatch": (ValueError, ["'fp4'", "'nf4'"]),
    "fp4": (ValueError, ["fp4", "NF4"]),
    "missing_absmax": (ValueError, ["missing", "'absmax'"]),
    "missing_json": (ValueError, ["missing", "quant_type", "blocksize"]),
    "missing_nested": (ValueError, ["missing", "nested_quant_map", "nested_offset"]),
    "unknown_key": (ValueError, ["unknown", "'bias'"]),
    "weight_size": (ValueError, ["weight", "(64, 1)", "(63, 1)"]),
    "weight_dtype": (TypeError, ["weight", "uint8", "float32"]),
    "shape_json": (ValueError, ["weight", "(32, 1)", "(64, 1)"]),
    "rows_span": (ValueError, ["blocksize 64", "in_features 96", "(3, 96)"]),
    "blocksize": (ValueError, ["blocksize", "48", "4096"]),
    "dtype": (ValueError, ["dtype", "'int8'", "bfloat16"]),
    "json_bytes": (ValueError, ["JSON"]),
    "quant_map": (ValueError, ["quant_map", "NF4"]),
    "nonfinite": (ValueError, ["absmax", "finite", "inf"]),
    "one_dim_shape": (ValueError, ["shape", "[128]"]),
    "not_a_dict": (TypeError, ["quant_state", "dict", "list"]),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_names_argument(name):
    exc, words = BAD[name]
    w, state = _mutate(name)
    with pytest.raises(exc) as info:
        QuantizedTensor.from_bnb(w, state)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("kw,words", [
    (dict(bits=4, block_size=64), ["scheme='absmax'", "nf4"]),
    (dict(bits=4, scheme="nf4", block_size=None), ["block_size=None"]),
    (dict(bits=4, scheme="nf4", block_size=64), ["block_size 64", "d_in 96", "short block"]),
    (dict(bits=4, scheme="nf4", block_size=24), ["blocksize", "got 24", "32, 64"]),
])
def test_export_refuses(kw, words):
    q = quantize(rng_for("r").standard_normal((96, 3)).astype(np.float32), **kw)
    with pytest.raises(ValueError) as info:
        q.to_bnb()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_export_double_quant_flag_checked():
    q = quantize(np.ones((64, 2), np.float32), 4, scheme="nf4")
    with pytest.raises(ValueError, match="double_quant must be None or a bool, got 'yes'"):
        q.to_bnb(double_quant="yes")


# ---------------------------------------------------------------- against bitsandbytes

def _bnb_peer():
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    return torch, bnb, bnb.functional


def _numpy_state(qs):
    return {k: v.numpy() for k, v in qs.as_dict(packed=True).items()}


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_matches_dequantize_4bit(data):
    torch, bnb, F = _bnb_peer()
    bs = data.draw(st.sampled_from([32, 64, 128, 256]), label="blocksize")
    out_f = data.draw(st.integers(1, 24), label="out")
    in_f = (data.draw(st.integers(1, 300), label="in") if out_f == 1 else
            bs * data.draw(st.integers(1, 3), label="blocks per row"))
    nested = data.draw(st.booleans(), label="compress_statistics")
    scale = data.draw(st.sampled_from([1e-3, 1.0, 40.0]), label="scale")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    W = torch.from_numpy((rng.standard_normal((out_f, in_f)) * scale).astype(np.float32))
    w, qs = F.quantize_4bit(W, blocksize=bs, compress_statistics=nested, quant_type="nf4")
    # reshaped: for a one-byte weight (shape (1, 1)) bitsandbytes returns the transpose
    ref = F.dequantize_4bit(w, qs).numpy().reshape(out_f, in_f)
    q = QuantizedTensor.from_bnb(w, qs.as_dict(packed=True))
    for be in ("numpy", "cython"):
        np.testing.assert_array_equal(bits(q.dequantize(backend=be)), bits(ref.T))
    x = rng.standard_normal((4, in_f)).astype(np.float32)
    np.testing.assert_allclose(qmatmul(x, q), x @ ref.T, rtol=1e-5,
                               atol=1e-5 * np.abs(ref).max() * np.sqrt(in_f))
    w2, s2 = q.to_bnb()
    s0 = _numpy_state(qs)
    np.testing.assert_array_equal(w2, w.numpy())
    assert list(s2) == list(s0)
    for k in s0:
        if k != "absmax" or not nested:
            np.testing.assert_array_equal(s2[k], s0[k], err_msg=k)
    if nested:      # a code may only change for another that rebuilds the same float32
        f = json.loads(s0["quant_state.bitsandbytes__nf4"].tobytes())
        rebuild = lambda c: _bnb._nested_scales(c, s0["nested_absmax"], s0["nested_quant_map"],
                                                np.float32(f["nested_offset"]),
                                                f["nested_blocksize"])
        np.testing.assert_array_equal(bits(rebuild(s2["absmax"])), bits(rebuild(s0["absmax"])))
    qs2 = F.QuantState.from_dict({k: torch.from_numpy(v) for k, v in s2.items()}, device="cpu")
    back = F.dequantize_4bit(torch.from_numpy(w2), qs2).numpy().reshape(out_f, in_f)
    np.testing.assert_array_equal(bits(back), bits(ref))


@pytest.mark.parametrize("double_quant", [False, True])
def test_fastdl_export_loads_in_bitsandbytes(double_quant):
    torch, bnb, F = _bnb_peer()
    w = rng_for("to bnb").standard_normal((256, 48)).astype(np.float32) * np.float32(0.02)
    q = quantize(w, 4, scheme="nf4", block_size=64)
    weight, state = q.to_bnb(double_quant=double_quant)
    qs = F.QuantState.from_dict({k: torch.from_numpy(v) for k, v in state.items()}, "cpu")
    got = F.dequantize_4bit(torch.from_numpy(weight), qs).numpy()
    np.testing.assert_array_equal(bits(got), bits(decode_export(weight, state)))
    if not double_quant:
        np.testing.assert_array_equal(bits(got), bits(q.dequantize().T))
        return
    # fastdl's nearest-entry codes rebuild the scales at least as well as bitsandbytes' own
    # compress_statistics does for the same weights
    _, qs_b = F.quantize_4bit(torch.from_numpy(np.ascontiguousarray(w.T)), blocksize=64,
                              compress_statistics=True, quant_type="nf4")
    ours = F.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
    theirs = F.dequantize_blockwise(qs_b.absmax, qs_b.state2) + qs_b.offset
    exact = torch.from_numpy(q.scales.reshape(-1).copy())
    assert (ours - exact).abs().max() <= (theirs - exact).abs().max() * 1.01
    np.testing.assert_allclose(_bnb.dynamic_map(), F.create_dynamic_map().numpy(), rtol=0,
                               atol=2 ** -24)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_state(dtype):
    torch, bnb, F = _bnb_peer()
    dt = getattr(torch, dtype)
    W = torch.from_numpy(rng_for(dtype).standard_normal((16, 256)).astype(np.float32)).to(dt)
    w, qs = F.quantize_4bit(W, blocksize=64, compress_statistics=True, quant_type="nf4")
    q = QuantizedTensor.from_bnb(w, qs)
    got = torch.from_numpy(np.ascontiguousarray(q.dequantize().T)).to(dt)
    assert torch.equal(got, F.dequantize_4bit(w, qs))
    assert json.loads(q.to_bnb()[1]["quant_state.bitsandbytes__nf4"].tobytes())["dtype"] == dtype


def test_fp4_and_row_spanning_blocks_refused():
    torch, bnb, F = _bnb_peer()
    W = torch.randn(3, 96)
    w, qs = F.quantize_4bit(W, blocksize=64, quant_type="nf4")
    with pytest.raises(ValueError, match=r"blocksize 64 does not divide in_features 96 of the "
                                         r"weight of shape \(3, 96\)"):
        QuantizedTensor.from_bnb(w, qs)
    w, qs = F.quantize_4bit(torch.randn(4, 128), blocksize=64, quant_type="fp4")
    with pytest.raises(ValueError, match="quant_type 'fp4' is not supported"):
        QuantizedTensor.from_bnb(w, qs.as_dict(packed=True))


@pytest.mark.parametrize("compress", [True, False])
def test_linear4bit_runs_through_qmatmul(compress):
    """A bitsandbytes-quantized layer, loaded from its state_dict as a Hugging Face
    checkpoint holds it, runs on the CPU through fastdl's qmatmul."""
    torch, bnb, F = _bnb_peer()
    torch.manual_seed(0)
    lin = torch.nn.Linear(192, 40)
    m = bnb.nn.Linear4bit(192, 40, bias=True, compute_dtype=torch.float32,
                          compress_statistics=compress, quant_type="nf4")
    m.load_state_dict(lin.state_dict())
    m = m.to("cpu")                         # quantizes the weight
    sd = m.state_dict()
    q = QuantizedTensor.from_bnb(sd["weight"], {k: v for k, v in sd.items()
                                                if k.startswith("weight.")})
    x = torch.randn(6, 192)
    with torch.no_grad():
        want = m(x).numpy()
        deq = F.dequantize_4bit(m.weight.data, m.weight.quant_state).numpy()
    got = qmatmul(x.numpy(), q) + sd["bias"].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, x.numpy() @ deq.T + sd["bias"].numpy(), rtol=1e-5,
                               atol=1e-5)
    q2 = QuantizedTensor.from_bnb(m.weight)         # a Params4bit carries its own state
    np.testing.assert_array_equal(q2.dequantize(), q.dequantize())
    q3 = QuantizedTensor.from_bnb(m.weight.data, m.weight.quant_state.as_dict())  # unpacked
    np.testing.assert_array_equal(q3.dequantize(), q.dequantize())
