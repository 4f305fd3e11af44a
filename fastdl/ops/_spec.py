"""Op specs: each op's arguments, results and kernel assumptions, declared once.

An ``OpSpec`` is read by the public API (it calls the op object, which
dispatches), by the registry (known op names, backend signatures), by the
backends (``check`` turns any arguments into what the kernel may assume, or
raises) and by the conformance suite (valid cases, bad-input table).
"""
from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from fastdl._validate import compute_dtype, overlaps

__all__ = ["Arg", "Result", "OpSpec", "SPECS", "define", "get", "checked"]

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
_DTYPE_SETS = {"float": (F16, F32, F64), "float32|float64": (F32, F64),
               "float32": (F32,), "float64": (F64,), "int64": (np.dtype(np.int64),)}
_KINDS = ("array", "int", "real", "flag", "choice", "quantized", "any")
_MASKED = np.ma.MaskedArray


def _dim(expr, dims):
    """Value of a shape entry: an int, a dimension name or a product "N*G"; None if unknown."""
    if isinstance(expr, int):
        return expr
    if expr in dims:
        return dims[expr]
    v = 1
    for part in expr.split("*"):
        if part not in dims:
            return None
        v *= dims[part]
    return v


def _dims_text(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


@dataclass(frozen=True)
class Arg:
    """One positional argument of an op.

    kind: "array", "int", "real", "flag" (bool), "choice" (one of ``choices``),
    "quantized" (a QuantizedTensor) or "any" (not checked).
    Arrays: ``dtype`` is "float" (float16/32/64), "float32|float64", "float32",
    "float64", "like:NAME" (NAME's dtype) or "compute:NAME" (the compute dtype of
    NAME: float32 for float16, else the same); ``shape`` is a tuple of ints,
    dimension names bound by the first array that has them, products "N*G", and
    "..." (more dimensions, last entry only), or a callable (dims, values) ->
    tuple.  ``convert``: array-likes and other real dtypes are converted (weights,
    statistics); otherwise the dtype must match.  ``reshape``: any array of the
    right size is reshaped.  ``out``: the caller's output buffer, checked (exact
    dtype and shape, C-contiguous, aligned, writeable, no overlap with the inputs)
    but never copied (``inplace``: it may be exactly that argument's array).  Every other array reaches the kernel C-contiguous and aligned
    (copied when it is not).
    Ints: ``low``/``high`` bounds (``high`` may be a dimension expression),
    ``divides`` a dimension the value must divide.
    """

    name: str
    kind: str = "array"
    dtype: str | None = None
    shape: Any = None
    optional: bool = False
    out: bool = False
    convert: bool = False
    reshape: bool = False
    nonempty: bool = False
    low: int | None = None
    high: Any = None
    divides: str | None = None
    choices: tuple = ()
    inplace: str | None = None
    packed: bool = False
    doc: str = ""

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"Arg {self.name!r}: kind must be one of {_KINDS}, got {self.kind!r}")
        # parsed once: the check runs on every call
        rule = self.dtype or "float"
        set_ = object.__setattr__
        set_(self, "_static", _DTYPE_SETS.get(rule))
        set_(self, "_ref", rule.partition(":")[2] or None)
        if isinstance(self.shape, tuple):
            rest = bool(self.shape) and self.shape[-1] == "..."
            set_(self, "_fixed", self.shape[:-1] if rest else self.shape)
            set_(self, "_rest", rest)

    # ---------------------------------------------------------------- description
    def describe(self) -> str:
        """The contract in words (docs, the op table, error messages)."""
        if self.doc:
            return self.doc
        if self.kind == "array":
            shape = "" if self.shape is None or callable(self.shape) else _dims_text(self.shape)
            dt = (self.dtype or "").replace("like:", "dtype of ").replace(
                "compute:", "compute dtype of ")
            return " ".join(p for p in (shape, dt) if p) + (" or None" if self.optional else "")
        if self.kind == "int":
            lo = "" if self.low is None else f"{self.low} <= "
            hi = "" if self.high is None else f" <= {self.high}"
            return f"int {lo}{self.name}{hi}".strip() + (" or None" if self.optional else "")
        if self.kind == "choice":
            return " | ".join(map(repr, self.choices))
        return {"real": "float", "flag": "bool", "quantized": "QuantizedTensor",
                "any": "any"}[self.kind]

    def _dtypes(self, values):
        if self._static is not None:
            return self._static
        dt = values[self._ref].dtype
        return (dt,) if self.dtype.startswith("like:") else (compute_dtype(dt),)

    # ---------------------------------------------------------------- checking
    def check(self, value, dims: dict, values: dict):
        """The value as the kernel may assume it, binding dimension names in ``dims``."""
        if value is None:
            if self.optional:
                return None
            if self.kind == "array":
                shape = "" if self.shape is None or callable(self.shape) else \
                    f" of shape {_dims_text(self.shape)}"
                raise TypeError(f"{self.name} must be a {' or '.join(map(str, self._dtypes(values)))}"
                                f" array{shape}, got None")
            raise TypeError(f"{self.name} must be {self.describe() or self.kind}, got None")
        if self.kind == "array":
            return self._array(value, dims, values)
        if self.kind == "int":
            return self._int(value, dims)
        if self.kind == "real":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                raise TypeError(f"{self.name} must be a real number, got {value!r} "
                                f"({type(value).__name__})")
            return float(value)
        if self.kind == "flag":
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{self.name} must be a bool, got {value!r} "
                                f"({type(value).__name__})")
            return bool(value)
        if self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise ValueError(f"{self.name} must be one of "
                                 f"{', '.join(map(repr, self.choices))}, got {value!r}")
            return value
        if self.kind == "quantized":
            from fastdl.quant import QuantizedTensor
            if not isinstance(value, QuantizedTensor):
                raise TypeError(f"{self.name} must be a fastdl.quant.QuantizedTensor, "
                                f"got {type(value).__name__}")
            if self.shape is not None:
                self._bind(self.shape, value.shape, dims)
            return value
        return value

    def _int(self, value, dims):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{self.name} must be an int, got {value!r} ({type(value).__name__})")
        v = int(value)
        hi = None if self.high is None else _dim(self.high, dims)
        if (self.low is not None and v < self.low) or (hi is not None and v > hi):
            lo = "-inf" if self.low is None else self.low
            bound = "inf" if hi is None else (
                f"{self.high}={hi}" if isinstance(self.high, str) else hi)
            raise ValueError(f"{self.name} must be in [{lo}, {bound}], got {v}")
        if self.divides is not None and dims[self.divides] % v:
            raise ValueError(f"{self.name} must be >= 1 and divide "
                             f"{self.divides}={dims[self.divides]}, got {v}")
        dims[self.name] = v
        return v

    def _array(self, value, dims, values):
        name = self.name
        allowed = self._dtypes(values)
        if type(value) is np.ndarray:
            pass
        elif isinstance(value, _MASKED):
            raise TypeError(f"{name} must not be a numpy masked array: its mask would be ignored")
        elif not isinstance(value, np.ndarray):
            if not self.convert or self.out:
                what = "" if self.convert else " or ".join(str(d) for d in allowed) + " "
                raise TypeError(f"{name} must be a {what}numpy.ndarray"
                                f"{' or None' if self.optional else ''}, got {type(value).__name__}")
            try:
                value = np.asarray(value)
            except Exception as exc:  # noqa: BLE001 - ragged lists and the like
                raise TypeError(f"{name} must be array-like of real numbers: {exc}") from None
        elif type(value) is not np.ndarray:
            value = value.view(np.ndarray)      # subclasses' operators must not run
        dt = value.dtype
        if self.convert:
            if dt.kind not in "biuf":
                raise TypeError(f"{name} must be a real numeric array, got dtype {value.dtype}")
        elif dt not in allowed:
            names = " or ".join(str(d) for d in allowed)
            raise TypeError(f"{name} must be a {names} array, got dtype {value.dtype}")
        if self.shape is not None:
            shape = self.shape(dims, values) if callable(self.shape) else self.shape
            if self.reshape:
                want = tuple(_dim(s, dims) for s in shape)
                if None not in want and value.size == math.prod(want):
                    value = value.reshape(want)
            self._bind(shape, value.shape, dims)
        if self.nonempty and value.size == 0:
            raise ValueError(f"{name} must not be empty, got shape {value.shape} (the public "
                             "functions handle empty inputs before dispatching)")
        if self.out:
            self._out(value, allowed, values)
            return value
        f = value.flags
        if f.c_contiguous and f.aligned and (not self.convert or dt == allowed[0]):
            return value
        if self.packed:
            raise ValueError(f"{name} must be C-contiguous and aligned (the public functions "
                             f"pack it), got strides {value.strides} for shape {value.shape} "
                             f"(aligned={f.aligned})")
        return np.require(value, allowed[0] if self.convert else None, ("C", "A"))

    def _bind(self, shape, got, dims):
        if shape is self.shape:
            fixed, rest = self._fixed, self._rest
        else:
            rest = bool(shape) and shape[-1] == "..."
            fixed = shape[:-1] if rest else shape
        if len(got) != len(fixed) and (not rest or len(got) < len(fixed)):
            want = f"at least {len(fixed)}" if rest else f"{len(fixed)}"
            raise ValueError(f"{self.name} must be {want}-D {_dims_text(shape)}, "
                             f"got shape {got}")
        for expr, n in zip(fixed, got):
            v = dims.get(expr) if type(expr) is str else expr
            if v is None and "*" in expr:
                v = _dim(expr, dims)
            if v is None:
                if "*" not in expr:
                    dims[expr] = n
                    dims.setdefault("_by", {})[expr] = self.name   # for the error message
            elif v != n:
                self._shape_error(fixed, rest, got, dims)

    def _shape_error(self, fixed, rest, got, dims):
        by = dims.get("_by", {})
        want = tuple(_dim(e, dims) if _dim(e, dims) is not None else e for e in fixed)
        src = sorted({by.get(p, p) for e in fixed if isinstance(e, str)
                      for p in e.split("*") if by.get(p, p) != self.name})
        why = f" (to match {', '.join(src)})" if src else ""
        raise ValueError(f"{self.name} must have shape {_dims_text(want)}"
                         f"{' + (...)' if rest else ''}{why}, got {got}")

    def _out(self, out, allowed, values):
        f = out.flags
        if not (f.c_contiguous and f.aligned and f.writeable):
            raise ValueError(f"{self.name} must be a writeable, aligned, C-contiguous array, "
                             f"got {out.dtype} {out.shape} (c_contiguous={f.c_contiguous}, "
                             f"aligned={f.aligned}, writeable={f.writeable})")
        for other, a in values.items():
            if not isinstance(a, np.ndarray) or not overlaps(out, a):
                continue
            same = (other == self.inplace and a.__array_interface__["data"][0]
                    == out.__array_interface__["data"][0] and a.strides == out.strides)
            if not same:
                raise ValueError(f"{self.name} must not share memory with {other}"
                                 + (f" (except being {other} itself)" if self.inplace else ""))


@dataclass(frozen=True)
class Result:
    """One result of an op: ``dtype`` and ``shape`` use the rules of ``Arg``;
    ``optional`` results are None when not asked for; ``exact`` results must equal
    the reference exactly (indices, codes)."""

    name: str
    dtype: str | None = None
    shape: Any = None
    optional: bool = False
    exact: bool = False
    doc: str = ""


@dataclass(frozen=True, eq=False)
class OpSpec:
    """An op: ``name``, positional ``args``, ``results``, what the kernel may assume.

    Calling the spec dispatches it: ``spec(*args, backend=None)`` runs the op on
    the backend the registry chooses (or ``backend``), after ``check``.
    ``rule(values, dims)`` checks what spans arguments; ``sample(rng)`` (tests)
    returns a tuple of valid arguments.
    """

    name: str
    args: tuple
    results: tuple
    area: str = ""
    assume: str = ""
    doc: str = ""
    rule: Callable | None = None
    sample: Callable | None = field(default=None, repr=False)

    def __post_init__(self):
        names = [a.name for a in self.args]
        if len(set(names)) != len(names):
            raise ValueError(f"op {self.name!r}: argument names repeat: {names}")
        # data arrays first (they bind the dimensions), then scalars, then the rest
        def rank(i):
            a = self.args[i]
            if a.kind == "quantized" or a.kind == "array" and not (
                    a.convert or a.out or callable(a.shape)
                    or (a.dtype or "").startswith(("like:", "compute:"))):
                return 0
            return 1 if a.kind != "array" else 2
        object.__setattr__(self, "_order", tuple(sorted(range(len(self.args)), key=rank)))

    @property
    def arg_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.args)

    def check(self, args: tuple) -> tuple:
        """``args`` as the kernels may assume them (see ``Arg``), or TypeError/ValueError."""
        if len(args) != len(self.args):
            raise TypeError(f"op {self.name!r} takes {len(self.args)} arguments "
                            f"({', '.join(self.arg_names)}), got {len(args)}")
        out, dims, values = list(args), {}, {}
        for i in self._order:
            a = self.args[i]
            out[i] = a.check(args[i], dims, values)
            values[a.name] = out[i]
        if self.rule is not None:
            self.rule(values, dims)
        return tuple(out)

    def signature_problem(self, fn) -> str | None:
        """Why ``fn`` cannot be called with this op's positional arguments, or None."""
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return None                          # a builtin without a signature: trusted
        params = list(sig.parameters.values())
        pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if any(p.kind == p.VAR_POSITIONAL for p in params):
            if len(pos) <= len(self.args):
                return None
        names = tuple(p.name for p in pos[:len(self.args)])
        if names != self.arg_names:
            return (f"takes ({', '.join(p.name for p in pos)}) but op {self.name!r} is called "
                    f"with ({', '.join(self.arg_names)})")
        extra = [p.name for p in params[len(self.args):]
                 if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if extra:
            return f"has required parameters {extra} beyond op {self.name!r}'s arguments"
        return None

    def __call__(self, *args, backend: str | None = None):
        from fastdl import registry
        return registry.dispatch(self, args, {}, backend)

    def __repr__(self):
        return f"<op {self.name}({', '.join(self.arg_names)})>"


SPECS: dict[str, OpSpec] = {}


def define(spec: OpSpec, *, replace: bool = False) -> OpSpec:
    """Add an op to the known ones (the built-in ops, and ops that plugins bring)."""
    if not isinstance(spec, OpSpec):
        raise TypeError(f"spec must be a fastdl.ops.OpSpec, got {type(spec).__name__}")
    if spec.name in SPECS and not replace and SPECS[spec.name] is not spec:
        raise ValueError(f"an op named {spec.name!r} is already defined; pass replace=True")
    SPECS[spec.name] = spec
    return spec


def get(op) -> OpSpec:
    """The spec of ``op`` (a name or a spec); unknown names are a ValueError."""
    if isinstance(op, OpSpec):
        return op
    if not isinstance(op, str):
        raise TypeError(f"op must be a str or a fastdl.ops.OpSpec, got {type(op).__name__}")
    try:
        return SPECS[op]
    except KeyError:
        raise ValueError(f"unknown op {op!r}; known ops: {', '.join(sorted(SPECS))}") from None


def checked(op, fn: Callable) -> Callable:
    """``fn`` behind its op's argument check: what a backend exposes (done once)."""
    spec = get(op)
    if getattr(fn, "__fastdl_op__", None) is spec:
        return fn
    problem = spec.signature_problem(fn)
    if problem is not None:
        raise TypeError(f"{getattr(fn, '__qualname__', fn)!s} {problem}")
    check = spec.check

    def run(*args, **kwargs):
        return fn(*check(args), **kwargs)

    run.__name__ = spec.name
    run.__qualname__ = getattr(fn, "__qualname__", spec.name)
    run.__doc__ = fn.__doc__
    run.__wrapped__ = fn
    run.__fastdl_op__ = spec
    return run
