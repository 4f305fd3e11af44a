"""fastdl.optim against torch.optim (single-tensor path) on the same parameters and gradients."""
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastdl import optim

torch = pytest.importorskip("torch")

# float64 agrees to a few ulps, float32 too: torch's vectorized kernels fuse a*b + c (one
# rounding) where NumPy rounds twice, and its float32 sqrt is not always correctly rounded
ULPS = 12

CONFIGS = [
    ("AdamW", {}),
    ("AdamW", dict(lr=3e-2, weight_decay=0.3, amsgrad=True)),
    ("AdamW", dict(maximize=True, betas=(0.5, 0.9), eps=1e-4)),
    ("Adam", {}),
    ("Adam", dict(weight_decay=0.2, amsgrad=True, maximize=True)),
    ("Adam", dict(lr=0.1, betas=(0.2, 0.6), eps=1e-3)),       # lerp's |w| >= 0.5 branch
    ("Adam", dict(betas=(0.0, 0.0))),
    ("SGD", {}),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
    ("SGD", dict(lr=0.02, weight_decay=0.5, maximize=True)),
]
IDS = [f"{k}-{'-'.join(f'{a}={b}' for a, b in kw.items()) or 'defaults'}" for k, kw in CONFIGS]


class Pair:
    """The same parameters in a fastdl optimizer and a torch one; steps both, compares."""

    def __init__(self, kind, kw, params, dtype):
        self.np = {k: v for k, v in params.items()}
        self.t = {k: torch.tensor(np.array(v), requires_grad=True) for k, v in params.items()}
        self.opt = getattr(optim, kind)(self.np, **kw)
        self.topt = getattr(torch.optim, kind)(list(self.t.values()), foreach=False, **kw)
        self.hist = {k: np.abs(np.array(v, dtype=np.float64)) for k, v in params.items()}
        self.ghist = {k: np.zeros(np.shape(v)) for k, v in params.items()}
        self.dtype = dtype
        self.steps = 0

    def step(self, grads):
        self.opt.step(grads)
        for k, tp in self.t.items():
            g = grads.get(k)
            tp.grad = None if g is None else torch.tensor(np.array(g))
            if g is not None:    # the scale of what the moments average (g + wd·p)
                self.ghist[k] = np.maximum(self.ghist[k], np.abs(g) + self.hist[k])
        self.topt.step()
        self.steps += 1
        for k, tp in self.t.items():
            ref = tp.detach().numpy()
            self.hist[k] = np.maximum(self.hist[k], np.abs(ref))
            # the two sides round differently at each step (torch fuses a*b + c) and the
            # parameters carry those differences forward: up to about one ulp per step
            assert_close(self.np[k], ref, self.hist[k], self.dtype, k, ULPS + self.steps)

    def check_state(self):
        for k, tp in self.t.items():
            tst = self.topt.state.get(tp, {})
            ours = self.opt.state.get(k, {})
            for key, val in tst.items():
                if key == "step":
                    assert ours["step"] == int(val.item())
                elif val is not None:
                    ref = val.numpy()
                    scale = self.ghist[k] ** (2 if "sq" in key else 1)
                    assert_close(ours[key], ref, np.maximum(np.abs(ref), scale), self.dtype,
                                 f"{k}.{key}")


def assert_close(ours, ref, scale, dtype, what, ulps=ULPS):
    """Within ``ulps`` ulps of each element's largest magnitude so far (a subtraction that
    nearly cancels keeps the absolute error of its operands)."""
    assert ours.dtype == dtype
    ulp = np.spacing(np.asarray(scale, dtype=dtype)).astype(np.float64)
    with np.errstate(invalid="ignore"):
        err = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    same = (ours == ref) | (np.isnan(ours) & np.isnan(ref))
    bad = ~same & ~(err <= ulps * ulp)
    assert not bad.any(), (what, ours[bad][:5], ref[bad][:5], (err / ulp)[bad][:5])


def grads_for(rng, shapes, dtype, steps, none_every=0):
    out = []
    for t in range(steps):
        scale = dtype(10.0 ** rng.integers(-3, 2))
        gs = {k: np.asarray(rng.standard_normal(s) * scale, dtype) for k, s in shapes.items()}
        if none_every and t % none_every == 1:
            gs["b"] = None           # torch: p.grad None, the parameter and its state stay
        if none_every and t % none_every == 2:
            gs.pop("a")
        out.append(gs)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind,kw", CONFIGS, ids=IDS)
def test_twenty_steps_match_torch(kind, kw, dtype):
    rng = np.random.default_rng(zlib.crc32(repr((kind, kw)).encode()))  # the same each run
    shapes = {"a": (17, 29), "b": (5,), "c": ()}
    params = {k: np.asarray(rng.standard_normal(s), dtype) for k, s in shapes.items()}
    pair = Pair(kind, kw, params, dtype)
    for gs in grads_for(rng, shapes, dtype, 20, none_every=4):
        pair.step(gs)
    pair.check_state()


@pytest.mark.parametrize("layout", ["chunked", "transposed", "strided", "grad-strided"])
@pytest.mark.parametrize("kind,kw", [CONFIGS[1], CONFIGS[4], CONFIGS[9], CONFIGS[10]],
                         ids=[IDS[1], IDS[4], IDS[9], IDS[10]])
def test_layouts_match_torch(kind, kw, layout, monkeypatch):
    """Chunks smaller than the arrays (a short last chunk) and non-contiguous views."""
    if layout == "chunked":
        monkeypatch.setattr(optim, "_CHUNK", 37)
    rng = np.random.default_rng(3)
    base = rng.standard_normal((40, 60)).astype(np.float32)
    p = {"chunked": base, "transposed": base.T, "strided": base[::2, 1::3],
         "grad-strided": base}[layout]
    pair = Pair(kind, kw, {"a": p}, np.float32)
    assert pair.np["a"] is p
    for _ in range(8):
        g = rng.standard_normal(p.shape).astype(np.float32)
        if layout == "grad-strided":
            g = np.asfortranarray(g)
        pair.step({"a": g})
    pair.check_state()
    if layout == "strided":       # only the view's elements moved
        mask = np.ones(base.shape, bool)
        mask[::2, 1::3] = False
        np.testing.assert_array_equal(base[mask], np.random.default_rng(3).standard_normal(
            (40, 60)).astype(np.float32)[mask])


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple),
       config=st.sampled_from(CONFIGS), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**32 - 1), chunk=st.sampled_from([1, 5, 65536]))
def test_any_shape_matches_torch(shape, config, dtype, seed, chunk):
    kind, kw = config
    rng = np.random.default_rng(seed)
    old = optim._CHUNK
    optim._CHUNK = chunk
    try:
        pair = Pair(kind, kw, {"a": np.asarray(rng.standard_normal(shape), dtype)}, dtype)
    finally:
        optim._CHUNK = old
    for _ in range(4):
        pair.step({"a": np.asarray(rng.standard_normal(shape), dtype)})
    pair.check_state()


def test_lr_change_between_steps_matches_torch():
    rng = np.random.default_rng(5)
    pair = Pair("AdamW", {}, {"a": rng.standard_normal(50)}, np.float64)
    for t in range(6):
        pair.opt.lr = 0.1 / (t + 1)
        pair.topt.param_groups[0]["lr"] = 0.1 / (t + 1)
        pair.step({"a": rng.standard_normal(50)})
    assert pair.opt.hyperparameters["lr"] == pytest.approx(0.1 / 6)


def test_non_finite_gradients_pass_through_as_in_torch():
    g = np.array([np.nan, np.inf, -np.inf, 1.0])
    for kind, kw in [("AdamW", {}), ("SGD", dict(momentum=0.5))]:
        pair = Pair(kind, kw, {"a": np.ones(4)}, np.float64)
        pair.step({"a": g})
        pair.step({"a": np.ones(4)})
        assert np.isnan(pair.np["a"][0])


def test_non_finite_gradients_do_not_warn(recwarn):
    opt = optim.Adam({"a": np.ones(3)})
    opt.step({"a": np.array([np.nan, np.inf, 0.0])})
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("kind,kw", [CONFIGS[1], CONFIGS[4], CONFIGS[9], CONFIGS[10]],
                         ids=[IDS[1], IDS[4], IDS[9], IDS[10]])
def test_state_dict_round_trip_continues_identically(kind, kw):
    rng = np.random.default_rng(11)
    shapes = {"a": (6, 7), "b": (3,), "c": ()}
    p = {k: np.asarray(rng.standard_normal(s)) for k, s in shapes.items()}
    grads = grads_for(rng, shapes, np.float64, 10, none_every=3)
    opt = getattr(optim, kind)(p, **kw)
    for gs in grads[:5]:
        opt.step(gs)
    sd = opt.state_dict()
    q = {k: v.copy() for k, v in p.items()}
    other = getattr(optim, kind)(q, lr=0.5)      # hyperparameters come from the state dict
    other.load_state_dict(sd)
    for arrays in sd["state"].values():           # the dict is a copy: changing it changes nothing
        for v in arrays.values():
            if isinstance(v, np.ndarray):
                v[...] = 1e9
    for gs in grads[5:]:
        opt.step(gs)
        other.step(gs)
    for k in p:
        np.testing.assert_array_equal(p[k], q[k])
    assert other.hyperparameters == opt.hyperparameters


def test_step_allocates_nothing_of_the_parameters_size():
    n = 1 << 20
    for opt in (optim.AdamW({"a": np.zeros(n, np.float32)}, amsgrad=True),
                optim.SGD({"a": np.zeros(n, np.float32)}, momentum=0.9, nesterov=True)):
        g = np.ones(n, np.float32)
        opt.step({"a": g})
        tracemalloc.start()
        try:
            opt.step({"a": g})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < n * 4 // 16, peak


# -- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind,kw,match", [
    ("AdamW", dict(lr=-1e-3), "lr"), ("AdamW", dict(lr=float("nan")), "lr"),
    ("Adam", dict(betas=(1.0, 0.9)), r"betas\[0\]"), ("Adam", dict(betas=(0.9, -0.1)), r"betas\[1\]"),
    ("AdamW", dict(eps=-1.0), "eps"), ("AdamW", dict(weight_decay=-0.1), "weight_decay"),
    ("SGD", dict(momentum=-0.5), "momentum"), ("SGD", dict(weight_decay=-1), "weight_decay"),
    ("SGD", dict(nesterov=True), "nesterov"),
    ("SGD", dict(nesterov=True, momentum=0.9, dampening=0.1), "nesterov"),
])
def test_bad_hyperparameters_are_value_errors(kind, kw, match):
    with pytest.raises(ValueError, match=match):
        getattr(optim, kind)({"a": np.zeros(3)}, **kw)


@pytest.mark.parametrize("kw,match", [
    (dict(lr="0.1"), "lr"), (dict(betas=0.9), "betas"), (dict(betas=(0.9,)), "betas"),
    (dict(amsgrad=1), "amsgrad"), (dict(maximize="yes"), "maximize"), (dict(eps=True), "eps"),
])
def test_bad_hyperparameter_types_are_type_errors(kw, match):
    with pytest.raises(TypeError, match=match):
        optim.AdamW({"a": np.zeros(3)}, **kw)


def test_bad_params():
    ro = np.zeros(3)
    ro.setflags(write=False)
    base = np.zeros(10)
    cases = [([np.zeros(3)], TypeError, "params must be a dict"),
             ({}, ValueError, "must not be empty"),
             ({"a": [1.0, 2.0]}, TypeError, r"params\['a'\] must be a numpy.ndarray"),
             ({"a": np.zeros(3, np.int64)}, TypeError, "float32 or float64, got int64"),
             ({"a": np.zeros(3, np.float16)}, TypeError, "got float16"),
             ({"a": ro}, ValueError, "writeable"),
             ({1: np.zeros(3)}, TypeError, "keys must be str"),
             ({"a": np.ma.zeros(3)}, TypeError, "masked"),
             ({"a": base[:6], "b": base[4:]}, ValueError, "share memory"),
             ({"x": np.zeros(2), "a": base[::2], "c": np.zeros(3), "b": base[3:8:3]},
              ValueError, r"params\['a'\] and params\['b'\]")]
    for params, exc, match in cases:
        with pytest.raises(exc, match=match):
            optim.SGD(params)
    optim.SGD({"even": base[::2], "odd": base[1::2], "z": np.zeros(0), "w": np.zeros(0)})


def test_bad_grads_change_nothing():
    p = {"a": np.ones((2, 3)), "b": np.ones(4)}
    opt = optim.AdamW(p)
    good = np.ones(4)
    cases = [([good], TypeError, "grads must be a dict"),
             ({"z": good}, ValueError, "not params"),
             ({"b": good, "a": np.ones((3, 2))}, ValueError, r"shape of its parameter \(2, 3\)"),
             ({"b": good, "a": np.ones((2, 3), np.float32)}, TypeError, "float64.*got float32"),
             ({"b": good, "a": [[1.0] * 3] * 2}, TypeError, "numpy.ndarray"),
             ({"b": p["b"]}, ValueError, "share memory")]
    for grads, exc, match in cases:
        with pytest.raises(exc, match=match):
            opt.step(grads)
    assert opt.state == {}
    np.testing.assert_array_equal(p["a"], 1.0)
    np.testing.assert_array_equal(p["b"], 1.0)


def test_bad_state_dicts():
    p = {"a": np.ones(3)}
    opt = optim.Adam(p)
    opt.step({"a": np.ones(3)})
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="'Adam'"):
        optim.AdamW({"a": np.ones(3)}).load_state_dict(sd)
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        opt.load_state_dict([])
    bad = opt.state_dict()
    bad["state"]["zz"] = bad["state"].pop("a")
    with pytest.raises(ValueError, match="'zz'"):
        opt.load_state_dict(bad)
    bad = opt.state_dict()
    bad["state"]["a"]["exp_avg"] = np.ones(4)
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(bad)
    bad = opt.state_dict()
    bad["state"]["a"]["step"] = 0
    with pytest.raises(ValueError, match="step"):
        opt.load_state_dict(bad)
    bad = opt.state_dict()
    bad["hyperparameters"]["amsgrad"] = True      # then max_exp_avg_sq is missing
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        opt.load_state_dict(bad)
    bad = opt.state_dict()
    bad["hyperparameters"]["lr"] = -1
    with pytest.raises(ValueError, match="lr"):
        opt.load_state_dict(bad)
    assert opt.state_dict()["hyperparameters"] == sd["hyperparameters"]   # nothing changed
    np.testing.assert_array_equal(opt.state["a"]["exp_avg"], sd["state"]["a"]["exp_avg"])
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -0.5
