"""Conformance suite: run any backend against the op specs and the NumPy reference.

For each op a backend implements, the checks are:

* ``signature``: the backend's function takes the spec's arguments;
* ``reference``: results on generated inputs (every dtype of the op, C-order,
  Fortran-order and strided inputs, one-element inputs) match the ``numpy``
  backend within the dtype's tolerance (indices and codes exactly), have the
  declared dtypes and shapes, and leave the inputs unchanged;
* ``bad-input``: each entry of the table generated from the spec (None, a
  list, a wrong dtype, a wrong rank or size, an empty or non-contiguous array,
  a masked array, a bool or float for an int, out-of-range ints, an unknown
  choice, a bad ``out``) raises TypeError or ValueError naming the argument;
* ``determinism``: results are bitwise equal at every SIMD level this machine
  runs (the compiled kernels) and at 1, 2 and 3 threads; an opt-in path that needs
  an instruction (``MissingInstructionError``) is compared at the levels it runs at,
  and declined where it runs at none.

An op the backend does not implement is reported as declined (skipped under
pytest).  In a plugin's tests::

    from fastdl.testing.conformance import make_test
    test_fastdl_conformance = make_test("mybackend")

or, without pytest, ``fastdl.testing.conformance.report("mybackend")``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from fastdl import ops, registry
from fastdl._validate import MissingInstructionError
from fastdl.testing._helpers import rng_for, simd, simd_levels, threads

__all__ = ["Check", "Declined", "checks", "report", "make_test"]

_TOL = {np.dtype(np.float16): 4e-3, np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-9}
_LAYOUTS = ("C", "F", "strided", "tiny")


class Declined(Exception):
    """The backend does not implement the op (or declines these arguments)."""


@dataclass
class Check:
    id: str
    op: str
    kind: str
    run: Callable[[], None]

    def __call__(self):
        self.run()


# ---------------------------------------------------------------- helpers

def _dtypes(spec):
    first = next(a for a in spec.args if a.kind in ("array", "quantized"))
    if first.kind == "quantized":     # the dtype is the float input's / out's
        other = [a for a in spec.args if a.kind == "array"]
        rule = other[0].dtype if other else "float32"
    else:
        rule = first.dtype or "float"
    if rule.startswith("like:"):        # dy first: the dtypes of the array it follows
        rule = next(a for a in spec.args if a.name == rule[5:]).dtype
    return {"float": (np.float16, np.float32, np.float64), "float32|float64":
            (np.float32, np.float64), "float32": (np.float32,),
            "float64": (np.float64,)}.get(rule, (np.float32,))


def _layout(a, layout):
    """The same values in another memory layout (F-order, or every other element)."""
    if layout == "F":
        return np.asfortranarray(a)
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


def _args(spec, seed, dtype, layout):
    rng = rng_for(spec.name, seed, str(np.dtype(dtype)), layout)
    args = list(spec.sample(rng, dtype, layout == "tiny"))
    if layout in ("F", "strided"):
        for i, a in enumerate(spec.args):
            if (a.kind == "array" and not a.out and not a.packed
                    and isinstance(args[i], np.ndarray) and args[i].ndim >= 1):
                args[i] = _layout(args[i], layout)
    return args


def _copy(v):
    return v.copy() if isinstance(v, np.ndarray) else v


def _as_tuple(spec, res):
    return (res,) if len(spec.results) == 1 and not isinstance(res, tuple) else tuple(res)


def _call(spec, args, backend):
    try:
        return _as_tuple(spec, spec(*[_copy(a) for a in args], backend=backend))
    except MissingInstructionError as e:     # an opt-in path this CPU cannot run
        raise Declined(str(e)) from None


@contextlib.contextmanager
def _installed(backend):
    """A Backend object is registered for the duration of a check."""
    if isinstance(backend, str):
        yield backend
        return
    registry.register_backend(backend, replace=True)
    try:
        yield backend.name
    finally:
        registry.unregister_backend(backend.name)


def _implements(name, op):
    """Declined unless backend ``name`` loads and has ``op`` (loads that backend only)."""
    try:
        registry.which_backend(op, backend=name)
    except registry.BackendNotImplementedError as exc:
        raise Declined(str(exc)) from None


def _close(spec, got, want, what, dtype):
    assert len(got) == len(want), f"{what}: {len(got)} results, the reference gives {len(want)}"
    for r, g, w in zip(spec.results, got, want):
        if w is None or g is None:
            assert g is None and w is None, f"{what}: {r.name} is {g!r}, reference {w!r}"
            continue
        g, w = np.asarray(g), np.asarray(w)
        assert type(g) is np.ndarray, f"{what}: {r.name} is a {type(g).__name__}"
        assert g.shape == w.shape, f"{what}: {r.name} has shape {g.shape}, reference {w.shape}"
        assert g.dtype == w.dtype, f"{what}: {r.name} has dtype {g.dtype}, reference {w.dtype}"
        if r.exact or g.dtype.kind not in "f":
            assert np.array_equal(g, w, equal_nan=g.dtype.kind == "f"), \
                f"{what}: {r.name} differs from the reference"
            continue
        # statistics come back in float64 but carry the precision of the data
        tol = max(_TOL[g.dtype], _TOL[np.dtype(dtype)])
        scale = max(1.0, float(np.nanmax(np.abs(w[np.isfinite(w)]), initial=0.0)))
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=tol,
                                   atol=tol * scale, equal_nan=True, err_msg=f"{what}: {r.name}")


def _same_bits(a, b, what):
    for x, y in zip(a, b):
        if x is None or y is None:
            assert x is None and y is None, what
            continue
        x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
        assert x.shape == y.shape and x.dtype == y.dtype, what
        assert x.tobytes() == y.tobytes(), f"{what}: results differ bitwise"


# ---------------------------------------------------------------- the checks

def _check_signature(spec, name):
    _implements(name, spec.name)
    fn = registry._state.slots[name].ops[spec.name]
    problem = spec.signature_problem(getattr(fn, "__wrapped__", fn))
    assert problem is None, f"backend {name!r}, op {spec.name!r}: {problem}"


def _check_reference(spec, name, dtype, layout, seed):
    _implements(name, spec.name)
    args = _args(spec, seed, dtype, layout)
    before = [_copy(a) for a in args]
    got = _call(spec, args, name)
    want = _call(spec, args, "numpy")
    what = f"{spec.name} on {name} ({np.dtype(dtype)}, {layout}, seed {seed})"
    _close(spec, got, want, what, dtype)
    for a, b, arg in zip(args, before, spec.args):
        if isinstance(a, np.ndarray) and not arg.out:
            assert np.array_equal(a, b, equal_nan=True), f"{what}: input {arg.name} changed"


def bad_inputs(spec, args):
    """(label, arguments, exception type) for each bad variant of each argument of a
    valid call ``args`` of ``spec``."""
    out = []
    # the argument that fixes each dimension name first (a wrong size there is valid)
    first = {}
    for i in spec._order:
        sh = spec.args[i].shape
        if isinstance(sh, tuple):
            for e in sh:
                if isinstance(e, str):
                    first.setdefault(e, spec.args[i].name)

    def variant(i, value, exc, label):
        bad = list(args)
        bad[i] = value
        out.append((f"{spec.args[i].name}: {label}", bad, exc))

    for i, a in enumerate(spec.args):
        v = args[i]
        if a.kind == "array":
            if not a.optional:
                variant(i, None, TypeError, "None")
            if a.out and v is None:
                continue
            if not a.convert or a.out:
                variant(i, [[0.0]], TypeError, "a list")
            if isinstance(v, np.ndarray):
                variant(i, v.astype(np.complex128), TypeError, "complex dtype")
                if not a.convert:
                    with np.errstate(invalid="ignore"):       # NaN or inf in the data
                        variant(i, v.astype(np.int32), TypeError, "int32 dtype")
                variant(i, np.ma.masked_array(v), TypeError, "masked array")
                fixed = isinstance(a.shape, tuple) and "..." not in a.shape
                if fixed and not a.reshape:
                    variant(i, v[None], ValueError, "one more dimension")
                last = a.shape[-1] if fixed and a.shape else None
                if isinstance(last, str) and first.get(last) != a.name and not a.reshape:
                    variant(i, np.zeros(v.shape[:-1] + (v.shape[-1] + 1,), v.dtype),
                            ValueError, "a wrong size")
                if a.nonempty:
                    variant(i, v[..., :0], ValueError, "empty")
                if (a.packed or a.out) and v.ndim and v.shape[-1] > 1:
                    variant(i, _layout(v, "strided"), ValueError, "not contiguous")
                if a.out:
                    ro = v.copy()
                    ro.flags.writeable = False
                    variant(i, ro, ValueError, "read-only")
        elif a.kind == "int":
            variant(i, True, TypeError, "a bool")
            variant(i, 1.5, TypeError, "a float")
            if a.low is not None:
                variant(i, a.low - 1, ValueError, "below its minimum")
            if a.high is not None:
                variant(i, 2 ** 62, ValueError, "above its maximum")
        elif a.kind == "real":
            variant(i, "1e-5", TypeError, "a str")
        elif a.kind == "flag":
            variant(i, 1, TypeError, "an int")
        elif a.kind == "choice":
            variant(i, "bogus", ValueError, "an unknown choice")
        elif a.kind == "quantized":
            variant(i, np.zeros((2, 2), np.float32), TypeError, "an ndarray")
    return out


def _valid_with_out(spec, seed, dtype):
    """A valid call whose optional arrays and out (if any) are given, so their variants
    are tested."""
    for attempt in range(100):
        args = _args(spec, (seed, attempt), dtype, "C")
        if all(args[i] is not None for i, a in enumerate(spec.args)
               if a.kind == "array" and a.optional and not a.out):
            break
    for i, a in enumerate(spec.args):
        if a.out and args[i] is None:
            ref = _call(spec, args, "numpy")[0]
            args[i] = np.empty_like(ref)
    return args


def _check_bad_inputs(spec, name, dtype, seed):
    _implements(name, spec.name)
    args = _valid_with_out(spec, seed, dtype)
    for label, bad, exc in bad_inputs(spec, args):
        try:
            spec(*bad, backend=name)
        except (TypeError, ValueError) as e:
            arg = label.split(":")[0]
            assert isinstance(e, exc), f"{spec.name} {label}: {type(e).__name__} ({e}), " \
                                       f"expected {exc.__name__}"
            assert arg in str(e), f"{spec.name} {label}: the message does not name {arg!r}: {e}"
        else:
            raise AssertionError(f"{spec.name} on {name}: {label} was accepted")


def _check_determinism(spec, name, dtype, seed):
    _implements(name, spec.name)
    args = _args(spec, seed, dtype, "C")
    base = None
    declined = None
    for level in simd_levels():
        for n in (1, 2, 3):
            try:
                with simd(level), threads(n):
                    res = _call(spec, args, name)
            except Declined as e:            # not at this level: compare the others
                declined = e
                break
            if base is None:
                base = res
            else:
                _same_bits(res, base, f"{spec.name} on {name} at {level}, {n} threads")
    if base is None:
        raise declined


def checks(backend, op_names=None, *, seeds=(0, 1)) -> list[Check]:
    """Every check for ``backend`` (a name, or a Backend object registered while its
    checks run), for all known ops or ``op_names``."""
    name = backend if isinstance(backend, str) else backend.name
    specs = [ops.get(o) for o in (op_names or ops.names())]
    out = []

    def add(spec, kind, label, fn, *a):
        def run():
            with _installed(backend):
                fn(spec, name, *a)
        out.append(Check(f"{name}-{spec.name}-{kind}{label}", spec.name, kind, run))

    for spec in specs:
        if spec.sample is None:          # an op without a sampler (a plugin's own)
            add(spec, "signature", "", _check_signature)
            continue
        add(spec, "signature", "", _check_signature)
        for dt in _dtypes(spec):
            dn = np.dtype(dt).name
            for layout in _LAYOUTS:
                for seed in seeds:
                    add(spec, "reference", f"-{dn}-{layout}-{seed}", _check_reference,
                        dt, layout, seed)
            add(spec, "bad-input", f"-{dn}", _check_bad_inputs, dt, 0)
            add(spec, "determinism", f"-{dn}", _check_determinism, dt, 0)
    return out


def report(backend, op_names=None) -> dict[str, str]:
    """``{op: "pass" | "declines: ..." | "FAIL: ..."}`` without pytest."""
    res: dict[str, str] = {}
    for c in checks(backend, op_names):
        if res.get(c.op, "pass") != "pass":
            continue
        try:
            c()
            res[c.op] = "pass"
        except Declined as e:
            res[c.op] = f"declines: {e}"
        except Exception as e:  # noqa: BLE001 - reported, not raised
            res[c.op] = f"FAIL ({c.id}): {type(e).__name__}: {str(e)[:300]}"
    return res


def make_test(*backends, op_names=None):
    """A pytest test function running every check of ``backends``; declined ops skip."""
    import pytest

    all_checks = [c for b in backends for c in checks(b, op_names)]

    @pytest.mark.parametrize("check", all_checks, ids=[c.id for c in all_checks])
    def test_conformance(check):
        try:
            check()
        except Declined as e:
            pytest.skip(str(e))

    return test_conformance
