"""Central finite differences in float64, for checking any backward in fastdl."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fastdl._validate import check_real, plain_array

__all__ = ["gradcheck", "GradcheckResult", "GradcheckError"]


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the finite differences."""


@dataclass
class GradcheckResult:
    """Per input: the largest absolute error, the error relative to the numerical
    gradient's scale, and the index where the largest error is."""

    ok: bool
    max_abs_error: dict = field(default_factory=dict)
    max_rel_error: dict = field(default_factory=dict)
    worst_index: dict = field(default_factory=dict)
    checked: dict = field(default_factory=dict)

    def __str__(self):
        rows = [f"{k}: abs {self.max_abs_error[k]:.3g}, rel {self.max_rel_error[k]:.3g} at "
                f"{self.worst_index[k]} ({self.checked[k]} entries)" for k in self.max_abs_error]
        return ("gradcheck " + ("passed" if self.ok else "FAILED") + "\n  "
                + "\n  ".join(rows))


def _as_items(inputs):
    if isinstance(inputs, dict):
        return list(inputs.items()), True
    if isinstance(inputs, (list, tuple)):
        return [(i, v) for i, v in enumerate(inputs)], False
    raise TypeError(f"inputs must be a sequence or a dict of arrays, got {type(inputs).__name__}")


def gradcheck(fn, inputs, eps: float = 1e-6, *, atol: float = 1e-6, rtol: float = 1e-5,
              max_entries: int | None = None, seed: int = 0,
              raise_exception: bool = True) -> GradcheckResult:
    """Compare the analytic gradients of ``fn`` with central finite differences.

    ``fn(*inputs)`` (or ``fn(**inputs)`` for a dict) returns ``(loss, grads)``:
    a real number and the gradient of it with respect to each input, in the same
    order (or with the same keys; for one input, an array); a gradient of None is
    not checked.  Every input
    is copied to float64 and perturbed entry by entry by ±eps; the check passes
    when |analytic - numerical| <= atol + rtol·|numerical| everywhere (like
    numpy.isclose).  ``max_entries``: check at most that many entries per input,
    chosen at random (``seed``), for large inputs.  Raises GradcheckError on a
    mismatch unless ``raise_exception=False``; returns a GradcheckResult.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    eps = check_real(eps, "eps", low=0)
    if eps == 0:
        raise ValueError("eps must be > 0, got 0.0")
    items, named = _as_items(inputs)
    arrays = []
    for k, v in items:
        a = plain_array(v, f"inputs[{k!r}]")
        if a.dtype.kind not in "biuf":
            raise TypeError(f"inputs[{k!r}] must be a real array, got dtype {a.dtype}")
        arrays.append(np.array(a, dtype=np.float64))     # a copy: the caller's stays intact

    def call(arrs):
        args = dict(zip([k for k, _ in items], arrs)) if named else arrs
        out = fn(**args) if named else fn(*args)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError("fn must return (loss, grads)")
        return out

    loss, grads = call(arrays)
    if named:
        if not isinstance(grads, dict):
            raise TypeError(f"fn must return its gradients as a dict for dict inputs, got "
                            f"{type(grads).__name__}")
        grads = [grads.get(k) for k, _ in items]
    elif isinstance(grads, np.ndarray) or grads is None:
        grads = [grads]                          # one input, its gradient as an array
    else:
        grads = list(grads)
    if len(grads) != len(items):
        raise ValueError(f"fn returned {len(grads)} gradients for {len(items)} inputs")
    rng = np.random.default_rng(seed)
    res = GradcheckResult(ok=True)
    for (k, _), a, g in zip(items, arrays, grads):
        if g is None:
            continue
        g = np.asarray(g, dtype=np.float64)
        if g.shape != a.shape:
            raise ValueError(f"the gradient of input {k!r} has shape {g.shape}, the input "
                             f"{a.shape}")
        idx = np.arange(a.size)
        if max_entries is not None and a.size > max_entries:
            idx = np.sort(rng.choice(a.size, max_entries, replace=False))
        flat = a.reshape(-1)
        num = np.empty(len(idx))
        for j, e in enumerate(idx):
            old = flat[e]
            flat[e] = old + eps
            lp = float(call(arrays)[0])
            flat[e] = old - eps
            lm = float(call(arrays)[0])
            flat[e] = old
            num[j] = (lp - lm) / (2 * eps)
        ana = g.reshape(-1)[idx]
        err = np.abs(ana - num)
        bad = err > atol + rtol * np.abs(num)
        w = int(np.argmax(err)) if len(err) else 0
        scale = max(float(np.max(np.abs(num), initial=0.0)), 1e-300)
        res.max_abs_error[k] = float(err.max(initial=0.0))
        res.max_rel_error[k] = float(err.max(initial=0.0)) / scale
        res.worst_index[k] = tuple(int(i) for i in np.unravel_index(idx[w], a.shape)) \
            if len(idx) else ()
        res.checked[k] = len(idx)
        if bad.any():
            res.ok = False
    if not res.ok and raise_exception:
        raise GradcheckError(str(res))
    return res
