"""Optimizers over a dict of NumPy arrays, with torch.optim's semantics and defaults.

``params`` maps a name to a float32 or float64 ``numpy.ndarray``; ``step(grads)``
updates those arrays in place from ``grads``, a dict of the same names (a name left
out, or mapped to None, is skipped this step, as torch skips a parameter whose
``.grad`` is None: its state, step count included, does not move).

The arithmetic follows torch's single-tensor path (``foreach=False``) operation by
operation, with every hyperparameter rounded to the parameter's dtype where torch
rounds it, so float64 results agree with torch to about 1e-15 and float32 ones to a
few ulps (torch's vectorized kernels fuse some multiply-adds, NumPy rounds twice).

A step allocates nothing of the parameters' size after the first one: C-contiguous
parameters and gradients are updated in chunks through two small scratch buffers
shared by all parameters of a dtype (which also keeps each chunk in cache across
the dozen elementwise passes); other layouts get two scratch arrays of their own
shape, made once.  Non-finite gradients are used as they are, as torch does.
"""
from __future__ import annotations

import numbers

import numpy as np
from numpy.lib.array_utils import byte_bounds

from fastdl._validate import FLOAT_DTYPES, check_flag, overlaps, reject_masked

__all__ = ["SGD", "Adam", "AdamW"]

_CHUNK = 65536    # elements per pass (measured best of 4K..1M): ~7 operands of a chunk stay in L2


def _real(value, name: str, *, low: float = 0.0, below: float | None = None,
          text: str | None = None) -> float:
    """A finite real in [low, below) (below=None: no upper bound)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    v = float(value)
    ok = np.isfinite(v) and v >= low and (below is None or v < below)
    if not ok:
        bound = text or (f"in [{low}, {below})" if below is not None else f"finite and >= {low}")
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return v


def _betas(betas) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a tuple of two real numbers, got {betas!r}")
    return tuple(_real(b, f"betas[{i}]", below=1.0) for i, b in enumerate(betas))


def _check_params(params) -> dict:
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of name -> numpy float array, got "
                        f"{type(params).__name__}")
    if not params:
        raise ValueError("params must not be empty: got a dict with no arrays")
    out = {}
    for name, p in params.items():
        if not isinstance(name, str):
            raise TypeError(f"params keys must be str, got {name!r} ({type(name).__name__})")
        reject_masked(p, f"params[{name!r}]")
        if not isinstance(p, np.ndarray):
            raise TypeError(f"params[{name!r}] must be a numpy.ndarray (updated in place), got "
                            f"{type(p).__name__}")
        if p.dtype not in FLOAT_DTYPES:
            raise TypeError(f"params[{name!r}] must have dtype float32 or float64, got {p.dtype}")
        if not p.flags.writeable:
            raise ValueError(f"params[{name!r}] must be writeable (it is updated in place), "
                             f"got a read-only array")
        out[name] = p.view(np.ndarray) if type(p) is not np.ndarray else p
    # memory updated twice per step would be silently wrong; a sweep over the byte ranges
    # checks only the arrays whose ranges meet (interleaved views), not every pair
    spans = sorted((*byte_bounds(a), name) for name, a in out.items() if a.size)
    active = []
    for lo, hi, name in spans:
        active = [(h, n) for h, n in active if h > lo]
        for _, other in active:
            if overlaps(out[other], out[name]):
                raise ValueError(f"params[{other!r}] and params[{name!r}] must not share memory")
        active.append((hi, name))
    return out


def _flat(a: np.ndarray):
    """A 1-D view of a C-contiguous array, else None."""
    return a.reshape(-1) if a.flags.c_contiguous else None


class _Optimizer:
    """What SGD and Adam share: parameter and gradient checks, state, scratch, chunking."""

    _STATE_KEYS: tuple = ()

    def __init__(self, params, hyper: dict):
        self._params = _check_params(params)
        self._hyper = hyper
        self.state: dict = {}          # name -> dict of this parameter's state arrays
        self._scratch = {}
        for dt in FLOAT_DTYPES:
            size = min(_CHUNK, max((p.size for p in self._params.values() if p.dtype == dt),
                                   default=0))
            self._scratch[dt] = (np.empty(size, dt), np.empty(size, dt))
        self._own_scratch: dict = {}    # name -> full-shape scratch pair (non-contiguous layouts)

    # -- public ---------------------------------------------------------------------------
    @property
    def params(self) -> dict:
        """name -> the array this optimizer updates (the caller's own arrays)."""
        return dict(self._params)

    @property
    def hyperparameters(self) -> dict:
        return dict(self._hyper)

    @property
    def lr(self) -> float:
        return self._hyper["lr"]

    @lr.setter
    def lr(self, value) -> None:
        """The learning rate may change between steps (a schedule), as torch's group["lr"]."""
        self._hyper["lr"] = _real(value, "lr")

    def step(self, grads) -> None:
        """Update every parameter that has a gradient in ``grads`` (name -> array or None)."""
        todo = self._check_grads(grads)      # all checked before anything changes
        with np.errstate(all="ignore"):      # non-finite values propagate silently, as in torch
            self._step(todo)

    def _step(self, todo) -> None:
        for name, g in todo:
            p = self._params[name]
            st = self.state.get(name)
            new = st is None
            if new:
                st = self.state[name] = self._init_state(p)
            consts = self._constants(st, p.dtype, new)
            fp, fg = _flat(p), _flat(g)
            if fp is not None and fg is not None:
                s1, s2 = self._scratch[p.dtype]
                chunk = max(s1.size, 1)
                flat_st = {k: (v.reshape(-1) if isinstance(v, np.ndarray) else v)
                           for k, v in st.items()}
                for i in range(0, fp.size, chunk):
                    j = min(i + chunk, fp.size)
                    sub = {k: (v[i:j] if isinstance(v, np.ndarray) else v)
                           for k, v in flat_st.items()}
                    self._update(fp[i:j], fg[i:j], sub, s1[:j - i], s2[:j - i], consts)
            else:
                pair = self._own_scratch.get(name)
                if pair is None:
                    pair = self._own_scratch[name] = (np.empty_like(p, order="C"),
                                                      np.empty_like(p, order="C"))
                self._update(p, g, st, pair[0], pair[1], consts)
            self._after_step(st)

    def state_dict(self) -> dict:
        """{"optimizer", "hyperparameters", "state": name -> {...}}, arrays copied."""
        return {"optimizer": type(self).__name__, "hyperparameters": dict(self._hyper),
                "state": {name: {k: (v.copy() if isinstance(v, np.ndarray) else v)
                                 for k, v in st.items()} for name, st in self.state.items()}}

    def load_state_dict(self, state_dict) -> None:
        """Restore what ``state_dict()`` returned (copies; checked fully before any change)."""
        if not isinstance(state_dict, dict) or not {"optimizer", "hyperparameters",
                                                    "state"} <= set(state_dict):
            raise TypeError("state_dict must be a dict with keys 'optimizer', 'hyperparameters' "
                            f"and 'state' (from state_dict()), got {type(state_dict).__name__}"
                            + (f" with keys {sorted(map(str, state_dict))}"
                               if isinstance(state_dict, dict) else ""))
        kind = state_dict["optimizer"]
        if kind != type(self).__name__:
            raise ValueError(f"state_dict['optimizer'] must be {type(self).__name__!r}, got {kind!r}")
        hyper = dict(state_dict["hyperparameters"])
        if set(hyper) != set(self._hyper):
            raise ValueError(f"state_dict['hyperparameters'] must have keys {sorted(self._hyper)}, "
                             f"got {sorted(hyper)}")
        hyper = type(self)._validate_hyper(**hyper)
        new = {}
        for name, st in dict(state_dict["state"]).items():
            if name not in self._params:
                raise ValueError(f"state_dict['state'] has {name!r}, which is not one of the "
                                 f"params {sorted(self._params)}")
            new[name] = self._check_state(name, st, hyper)
        self._hyper, self.state = hyper, new

    # -- helpers for the subclasses ---------------------------------------------------------
    def _check_grads(self, grads) -> list:
        if not isinstance(grads, dict):
            raise TypeError(f"grads must be a dict of name -> numpy array or None, got "
                            f"{type(grads).__name__}")
        unknown = [n for n in grads if n not in self._params]
        if unknown:
            raise ValueError(f"grads has names that are not params: {unknown!r}; params are "
                             f"{sorted(self._params)}")
        todo = []
        for name, p in self._params.items():
            g = grads.get(name)
            if g is None:
                continue
            reject_masked(g, f"grads[{name!r}]")
            if not isinstance(g, np.ndarray):
                raise TypeError(f"grads[{name!r}] must be a numpy.ndarray, got {type(g).__name__}")
            if g.shape != p.shape:
                raise ValueError(f"grads[{name!r}] must have the shape of its parameter "
                                 f"{p.shape}, got {g.shape}")
            if g.dtype != p.dtype:
                raise TypeError(f"grads[{name!r}] must have the dtype of its parameter "
                                f"({p.dtype}), got {g.dtype}")
            if overlaps(g, p):
                raise ValueError(f"grads[{name!r}] must not share memory with its parameter")
            todo.append((name, g.view(np.ndarray) if type(g) is not np.ndarray else g))
        return todo

    def _check_state(self, name: str, st, hyper: dict) -> dict:
        p = self._params[name]
        if not isinstance(st, dict):
            raise TypeError(f"state_dict['state'][{name!r}] must be a dict, got {type(st).__name__}")
        keys = self._state_keys(hyper)
        if set(st) != set(keys):
            raise ValueError(f"state_dict['state'][{name!r}] must have keys {sorted(keys)}, "
                             f"got {sorted(st)}")
        out = {}
        for k in keys:
            v = st[k]
            if k == "step":
                if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                    raise ValueError(f"state_dict['state'][{name!r}]['step'] must be an int >= 1, "
                                     f"got {v!r}")
                out[k] = int(v)
                continue
            if not isinstance(v, np.ndarray) or v.shape != p.shape or v.dtype != p.dtype:
                got = (f"{v.dtype} array of shape {v.shape}" if isinstance(v, np.ndarray)
                       else type(v).__name__)
                raise ValueError(f"state_dict['state'][{name!r}][{k!r}] must be a {p.dtype} "
                                 f"array of shape {p.shape}, got {got}")
            out[k] = np.array(v, dtype=p.dtype, order="C", copy=True)
        return out

    def _after_step(self, st: dict) -> None:
        pass

    def _grad_in(self, p, g, s1, consts):
        """torch's grad = -grad (maximize), then grad + wd·param (L2): into s1 when changed.
        (-g) + x is computed as x - g: the same IEEE result."""
        wd, maximize = consts["l2"], consts["maximize"]
        if wd is not None:
            np.multiply(p, wd, out=s1)
            (np.subtract if maximize else np.add)(s1, g, out=s1)
            return s1
        if maximize:
            np.negative(g, out=s1)
            return s1
        return g


class SGD(_Optimizer):
    """Stochastic gradient descent, as ``torch.optim.SGD`` (defaults included)::

        g ← -g (maximize);  g ← g + weight_decay·θ
        momentum ≠ 0:  b ← g on the first step, else b ← momentum·b + (1 - dampening)·g
                       g ← g + momentum·b (nesterov), else g ← b
        θ ← θ - lr·g

    State per parameter: ``momentum_buffer`` (only with momentum).
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, maximize=False):
        super().__init__(params, self._validate_hyper(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, maximize=maximize))

    @staticmethod
    def _validate_hyper(*, lr, momentum, dampening, weight_decay, nesterov, maximize) -> dict:
        h = {"lr": _real(lr, "lr"), "momentum": _real(momentum, "momentum"),
             "dampening": _real(dampening, "dampening", low=-np.inf),
             "weight_decay": _real(weight_decay, "weight_decay"),
             "nesterov": check_flag(nesterov, "nesterov"),
             "maximize": check_flag(maximize, "maximize")}
        if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
            raise ValueError(f"nesterov=True requires momentum > 0 and dampening == 0, got "
                             f"momentum={h['momentum']}, dampening={h['dampening']}")
        return h

    @staticmethod
    def _state_keys(hyper) -> tuple:
        return ("momentum_buffer",) if hyper["momentum"] != 0 else ()

    def _init_state(self, p) -> dict:
        return {"momentum_buffer": np.empty(p.shape, p.dtype)} if self._hyper["momentum"] else {}

    def _constants(self, st, dtype, new: bool) -> dict:
        h, f = self._hyper, dtype.type
        return {"l2": f(h["weight_decay"]) if h["weight_decay"] != 0 else None,
                "maximize": h["maximize"], "momentum": f(h["momentum"]),
                "alpha": f(1 - h["dampening"]), "neg_lr": f(-h["lr"]),
                "fresh": new, "nesterov": h["nesterov"],
                "use_momentum": h["momentum"] != 0}

    def _update(self, p, g, st, s1, s2, c) -> None:
        g = self._grad_in(p, g, s1, c)
        if c["use_momentum"]:
            buf = st["momentum_buffer"]
            if c["fresh"]:
                np.copyto(buf, g)
            else:
                np.multiply(buf, c["momentum"], out=buf)
                if c["alpha"] == 1:
                    np.add(buf, g, out=buf)
                else:
                    np.multiply(g, c["alpha"], out=s2)
                    np.add(buf, s2, out=buf)
            if c["nesterov"]:
                np.multiply(buf, c["momentum"], out=s2)
                np.add(g, s2, out=s2)
                g = s2
            else:
                g = buf
        np.multiply(g, c["neg_lr"], out=s1)
        np.add(p, s1, out=p)


class Adam(_Optimizer):
    """Adam, as ``torch.optim.Adam`` (defaults included; weight decay is the L2 term
    added to the gradient)::

        g ← -g (maximize);  g ← g + weight_decay·θ
        m ← lerp(m, g, 1 - β1);  v ← β2·v + (1 - β2)·g·g;  v̂ ← max(v̂, v) (amsgrad)
        θ ← θ - lr/(1 - β1^t) · m / (√v (or √v̂) / √(1 - β2^t) + eps)

    State per parameter: ``step`` (int), ``exp_avg``, ``exp_avg_sq`` and, with amsgrad,
    ``max_exp_avg_sq``.
    """

    _DECOUPLED = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, maximize=False):
        super().__init__(params, self._validate_hyper(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize))

    @staticmethod
    def _validate_hyper(*, lr, betas, eps, weight_decay, amsgrad, maximize) -> dict:
        return {"lr": _real(lr, "lr"), "betas": _betas(betas), "eps": _real(eps, "eps"),
                "weight_decay": _real(weight_decay, "weight_decay"),
                "amsgrad": check_flag(amsgrad, "amsgrad"),
                "maximize": check_flag(maximize, "maximize")}

    @staticmethod
    def _state_keys(hyper) -> tuple:
        return ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if hyper["amsgrad"]
                                                     else ())

    def _init_state(self, p) -> dict:
        st = {"step": 0, "exp_avg": np.zeros(p.shape, p.dtype),
              "exp_avg_sq": np.zeros(p.shape, p.dtype)}
        if self._hyper["amsgrad"]:
            st["max_exp_avg_sq"] = np.zeros(p.shape, p.dtype)
        return st

    def _constants(self, st, dtype, new: bool) -> dict:
        h, f = self._hyper, dtype.type
        lr, (beta1, beta2), wd = h["lr"], h["betas"], h["weight_decay"]
        step = float(st["step"] + 1)          # torch's float step tensor, incremented first
        # lerp's weight 1 - β1 in the dtype; torch switches formula at |w| >= 0.5
        w = f(1 - beta1)
        return {"l2": f(wd) if wd != 0 and not self._DECOUPLED else None,
                "decay": f(1 - lr * wd) if wd != 0 and self._DECOUPLED else None,
                "maximize": h["maximize"], "w": w, "small": abs(w) < 0.5,
                "one_minus_w": f(f(1) - w),
                "beta2": f(beta2), "c2": f(1 - beta2),
                "bc2_sqrt": f((1 - beta2 ** step) ** 0.5),
                "neg_step_size": f(-(lr / (1 - beta1 ** step))),
                "eps": f(h["eps"]), "amsgrad": h["amsgrad"]}

    def _update(self, p, g, st, s1, s2, c) -> None:
        if c["decay"] is not None:
            np.multiply(p, c["decay"], out=p)
        g = self._grad_in(p, g, s1, c)
        m, v = st["exp_avg"], st["exp_avg_sq"]
        np.subtract(g, m, out=s2)                   # torch's lerp(m, g, w)
        if c["small"]:
            np.multiply(s2, c["w"], out=s2)
            np.add(m, s2, out=m)
        else:
            np.multiply(s2, c["one_minus_w"], out=s2)
            np.subtract(g, s2, out=m)
        np.multiply(g, c["c2"], out=s2)              # addcmul: v + (c2·g)·g
        np.multiply(s2, g, out=s2)
        np.multiply(v, c["beta2"], out=v)
        np.add(v, s2, out=v)
        if c["amsgrad"]:
            vmax = st["max_exp_avg_sq"]
            np.maximum(vmax, v, out=vmax)
            v = vmax
        np.sqrt(v, out=s2)
        np.divide(s2, c["bc2_sqrt"], out=s2)
        np.add(s2, c["eps"], out=s2)
        np.multiply(m, c["neg_step_size"], out=s1)   # addcdiv: θ + (value·m)/denom
        np.divide(s1, s2, out=s1)
        np.add(p, s1, out=p)

    def _after_step(self, st: dict) -> None:
        st["step"] += 1


class AdamW(Adam):
    """AdamW, as ``torch.optim.AdamW`` (defaults included): Adam with the weight decay
    decoupled from the gradient, θ ← θ·(1 - lr·weight_decay) before the moments, and
    ``weight_decay=1e-2`` by default."""

    _DECOUPLED = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize)
