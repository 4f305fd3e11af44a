"""The validating adapter every search drives: one LM protocol behind ``step``/``advance``."""
from __future__ import annotations

import inspect
import time

import numpy as np

from fastdl._validate import as_float_array
from fastdl.decode.lm import INT64_MAX, Logits, is_stateful, vocab_size
from fastdl.decode.prompts import Prompts, check_ids

__all__ = ["Model", "token_id", "eos_ids"]

# float32 log-sum-exp rounding can leave a normalized log-prob a few ulp above 0
_POSITIVE_TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def _takes_mask(fn) -> bool:
    if isinstance(fn, Logits):
        return _takes_mask(fn.lm)
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):          # builtins without a signature: try it
        return True
    return any(p.name == "attention_mask" or p.kind is p.VAR_KEYWORD for p in params)


class Model:
    """What the searches drive: one protocol behind ``step``/``advance``, each
    output checked, LM time measured (``stats.lm_time_s``, ``stats.lm_calls``;
    ``reorder`` calls in ``stats.reorder_time_s``).

    ``start(prompts)`` sets the rows to the prompts; the first ``step`` runs the
    prompt through the model (``prefill``, or ``initial_state`` and one ``step``
    per prompt column); rows are then the live hypotheses, and
    ``advance(parents, tokens)`` makes row i the child of old row ``parents[i]``
    extended by ``tokens[i]``.
    """

    def __init__(self, lm, bos, eos, stats, names=("bos", "eos")):
        self.stateful = is_stateful(lm)
        if not self.stateful and not callable(lm):
            raise TypeError("lm must be callable (lm(prefixes) -> log_probs) or have "
                            f"initial_state/step/reorder methods, got {type(lm).__name__}")
        self.lm, self.stats = lm, stats
        self.normalized = bool(getattr(lm, "normalized", True))
        self.N = vocab_size(lm)
        self.names = names
        self.bos = None if bos is None else token_id(bos, names[0], self.N)
        self.eos = eos_ids(eos, self.N, names[1])
        self.t = 0           # tokens generated after the prompt in each row
        self.state = self.hist = self.mask = self.last = self.prompts = None
        self._pending = False

    def start(self, prompts: Prompts):
        """One row per prompt; the model sees them at the next ``step``."""
        if self.N is not None:
            check_ids(prompts, self.N)
        self.t, self.prompts, self._pending = 0, prompts, True
        self.last = prompts.ids[:, -1].copy()
        if not self.stateful:
            self.hist = prompts.ids.copy()
            self.mask = None if prompts.mask is None else prompts.mask.copy()
            if self.mask is not None and not _takes_mask(self.lm):
                raise ValueError("the prompts are left-padded, so the model must take the padding "
                                 "mask: give lm an attention_mask= parameter (lm(prefixes, "
                                 "attention_mask=mask), mask 0 at padding), or decode prompts "
                                 "of equal length")

    def step(self, fast: bool = False):
        """Log-probs (or logits) of the next token for every row, checked:
        returns ``(values (rows, N), row max (rows,))``.  ``fast`` (a model of
        logits): the row max and its NaN/+inf check are left to the caller, whose
        fused kernel finds them (``row_max``, ``check_rows``)."""
        if self._pending:
            out = self._prefill()
            self._pending = False
        elif self.stateful:
            out, self.state = self._timed(self.lm.step, self.last.copy(), self.state)
        elif self.mask is None:
            out = self._timed(self.lm, self.hist.copy())
        else:
            out = self._timed(self.lm, self.hist.copy(), attention_mask=self.mask.copy())
        return self._check(out, fast and not self.normalized)

    def _prefill(self):
        p = self.prompts
        if not self.stateful:
            if self.mask is None:
                return self._timed(self.lm, self.hist.copy())
            return self._timed(self.lm, self.hist.copy(), attention_mask=self.mask.copy())
        if callable(getattr(self.lm, "prefill", None)):
            out, self.state = self._timed(self.lm.prefill, p.ids.copy(), p.full_mask().copy())
            return out
        if p.mask is not None:
            raise ValueError("the prompts have different lengths (left padding), and the model has "
                             "no prefill(input_ids, attention_mask) method to read padded prompts; "
                             "add one, or decode prompts of equal length")
        self.state = self._timed(self.lm.initial_state, p.batch, kind="init")
        out = None
        for j in range(p.width):
            out, self.state = self._timed(self.lm.step, p.ids[:, j].copy(), self.state)
        return out

    def advance(self, parents: np.ndarray, tokens: np.ndarray):
        parents = np.asarray(parents, np.int64)
        tokens = np.asarray(tokens, np.int64)
        self.t += 1
        same = len(parents) == len(self.last) and (parents == np.arange(len(parents))).all()
        self.last = tokens
        if self.stateful:
            if not same:                        # the rows stay where they are: no reorder
                self.state = self._timed(self.lm.reorder, self.state, parents, kind="reorder")
        else:
            self.hist = np.concatenate([self.hist[parents], tokens[:, None]], axis=1)
            if self.mask is not None:
                self.mask = np.concatenate([self.mask[parents],
                                            np.ones((len(parents), 1), np.int64)], axis=1)

    def keep(self, rows: np.ndarray):
        """Keep only ``rows`` (same tokens, no step)."""
        rows = np.asarray(rows, np.int64)
        self.last = self.last[rows]
        if self.stateful:
            self.state = self._timed(self.lm.reorder, self.state, rows, kind="reorder")
        else:
            self.hist = self.hist[rows]
            if self.mask is not None:
                self.mask = self.mask[rows]

    def branch(self, state):
        """Stateful only: a private copy of a one-row ``state`` (so that siblings
        sharing it are not disturbed)."""
        return self._timed(self.lm.reorder, state, np.zeros(1, np.int64), kind="reorder")

    def _timed(self, fn, *args, kind="call", **kwargs):
        """Run a model method, timed: a forward pass (``call``) or ``init`` is LM
        time; a ``reorder`` is the search's cache bookkeeping (Hugging Face's
        non-model time has its cache reordering too)."""
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            dt = time.perf_counter() - t0
            if kind == "reorder":
                self.stats.reorder_time_s += dt
            else:
                self.stats.lm_time_s += dt
                self.stats.lm_calls += kind == "call"

    def row_max(self, lp):
        """The row maxima, after ``_check``'s NaN/+inf check (for a fast step)."""
        return self._values(lp)[1]

    def check_rows(self, lp):
        """Raise the error a full check of ``lp`` gives (a fused kernel saw NaN)."""
        self._values(lp)
        raise ValueError(f"step {self.t + 1}: the language model returned NaN or +inf")

    def _check(self, out, fast=False):
        where = f"step {self.t + 1}: the language model"
        rows = len(self.last)
        try:
            lp = np.asarray(out)
        except Exception as exc:  # noqa: BLE001 - report what came back
            raise ValueError(f"{where} returned {type(out).__name__}, not an array: {exc}") from None
        if lp.dtype.kind not in "biuf":
            raise ValueError(f"{where} returned dtype {lp.dtype}; expected real numbers "
                             "(float32/float64)")
        lp = as_float_array(lp, "log_probs")
        if lp.ndim != 2 or lp.shape[0] != rows or (self.N is not None and lp.shape[1] != self.N):
            want = f"({rows}, {self.N if self.N is not None else 'N'})"
            raise ValueError(f"{where} returned shape {lp.shape}; expected {want} "
                             "(one row of vocabulary scores per prefix)")
        if lp.shape[1] == 0:
            raise ValueError(f"{where} returned an empty vocabulary (shape {lp.shape})")
        if self.N is None:
            self.N = lp.shape[1]
            if self.bos is not None:
                token_id(self.bos, self.names[0], self.N)
            for i in self.eos:
                token_id(i, self.names[1], self.N)
            check_ids(self.prompts, self.N)
        return (lp, None) if fast else self._values(lp)

    def _values(self, lp):
        where = f"step {self.t + 1}: the language model"
        m = lp.max(axis=1)                 # one read finds NaN, +inf and positive log-probs
        if np.isnan(m).any():
            raise ValueError(f"{where} returned NaN (row {int(np.flatnonzero(np.isnan(m))[0])})")
        if (m == np.inf).any():
            raise ValueError(f"{where} returned +inf (row {int(np.flatnonzero(m == np.inf)[0])})")
        if self.normalized and m.max() > 0:
            if m.max() > _POSITIVE_TOL[lp.dtype]:
                raise ValueError(f"{where} returned log-probabilities above 0 (max "
                                 f"{float(m.max()):g}) while it says it is normalized; give it "
                                 "normalized = False or wrap it in fastdl.decode.Logits if it "
                                 "returns logits")
            # rounding noise above 0: clip, so a prefix still bounds its extensions
            lp, m = np.minimum(lp, 0), np.minimum(m, 0)
        return lp, m


def token_id(value, name: str, N: int | None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a token id (int), got {value!r} ({type(value).__name__})")
    value = int(value)
    # before the vocabulary size is known, ids must at least fit the int64 token arrays
    if value < 0 or value >= (N if N is not None else INT64_MAX + 1):
        bound = N if N is not None else "N (the vocabulary size; at most 2**63 - 1)"
        raise ValueError(f"{name} must be a token id in [0, {bound}), got {value}")
    return value


def eos_ids(eos, N: int | None, name: str = "eos") -> tuple[int, ...]:
    if eos is None:
        return ()
    ids = [eos] if isinstance(eos, (int, np.integer)) and not isinstance(eos, bool) else eos
    try:
        ids = list(ids)
    except TypeError:
        raise TypeError(f"{name} must be a token id, a list of ids or None, got {eos!r}") from None
    if not ids:
        raise ValueError(f"{name} must not be an empty list (use None for no end token)")
    return tuple(sorted({token_id(i, name, N) for i in ids}))
