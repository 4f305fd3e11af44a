"""Language-model protocols, the validating adapter the searches use, and ``TreeLM``.

Two protocols; every search accepts either:

* **callable**: ``lm(prefixes) -> log_probs`` with ``prefixes`` int64 ``(B, t)``
  whose column 0 is ⟨BOS⟩ (the whole history w_{0:t-1}), result ``(B, N)``;
* **stateful**: ``lm.initial_state(batch)``, ``lm.step(tokens, state) ->
  (log_probs, state)`` (``tokens`` int64 ``(B,)``: the last token of each row;
  the first call gets ⟨BOS⟩) and ``lm.reorder(state, indices)`` -> the state
  of rows ``indices`` (int64, may repeat or drop rows), so caches follow the
  surviving beams.  An object with all three methods is used statefully.

A model returns log-probabilities (every entry <= 0; rows need not sum to 1,
e.g. a pruned tree) unless it has ``normalized = False``, or is wrapped in
``Logits(model)``: then the searches apply log-softmax to its rows.
"""
from __future__ import annotations

import numbers
import time
from typing import Mapping, Sequence

import numpy as np

from fastdl._validate import as_float_array

__all__ = ["Logits", "TreeLM", "vocab_size"]

INT64_MAX = 2 ** 63 - 1

# float32 log-sum-exp rounding can leave a normalized log-prob a few ulp above 0
_POSITIVE_TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


class Logits:
    """Wrap a model whose outputs are unnormalized logits (``normalized = False``).

    Works for both protocols: calls, ``initial_state``, ``step`` and
    ``reorder`` are passed through.
    """

    normalized = False

    def __init__(self, lm):
        self.lm = lm
        for name in ("initial_state", "step", "reorder", "vocab", "vocab_size", "bos",
                     "decode"):
            if hasattr(lm, name):
                setattr(self, name, getattr(lm, name))

    def __call__(self, prefixes):
        return self.lm(prefixes)


def vocab_size(lm) -> int | None:
    """N when the model declares it (``vocab_size`` or ``len(vocab)``), else None."""
    n = getattr(lm, "vocab_size", None)
    if n is None and getattr(lm, "vocab", None) is not None:
        n = len(lm.vocab)
    if n is None:
        return None
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"the model's vocab_size must be an int, got {n!r} ({type(n).__name__})")
    if not 1 <= n <= INT64_MAX:
        raise ValueError(f"the model's vocab_size must be in [1, 2**63 - 1], got {n}")
    return int(n)


def is_stateful(lm) -> bool:
    return all(callable(getattr(lm, a, None)) for a in ("initial_state", "step", "reorder"))


class Model:
    """What the searches drive: one protocol behind ``step``/``advance``, each
    output checked, LM time measured (``stats.lm_time_s``, ``stats.lm_calls``).

    Rows are the live hypotheses; ``advance(parents, tokens)`` makes row i the
    child of old row ``parents[i]`` extended by ``tokens[i]``.
    """

    def __init__(self, lm, bos, eos, stats):
        self.stateful = is_stateful(lm)
        if not self.stateful and not callable(lm):
            raise TypeError("lm must be callable (lm(prefixes) -> log_probs) or have "
                            f"initial_state/step/reorder methods, got {type(lm).__name__}")
        self.lm, self.stats = lm, stats
        self.normalized = bool(getattr(lm, "normalized", True))
        self.N = vocab_size(lm)
        self.bos = _token(bos, "bos", self.N)
        self.eos = _eos(eos, self.N)
        self.t = 0           # tokens after ⟨BOS⟩ in each row
        self.state = self.hist = self.last = None

    def start(self, rows: int = 1):
        """``rows`` copies of the empty sequence ⟨BOS⟩."""
        self.t = 0
        self.last = np.full(rows, self.bos, np.int64)
        if self.stateful:
            self.state = self._timed(self.lm.initial_state, rows, call=False)
        else:
            self.hist = self.last[:, None].copy()

    def step(self):
        """Log-probs (or logits) of the next token for every row, checked:
        returns ``(values (rows, N), row max (rows,))``."""
        if self.stateful:
            out, self.state = self._timed(self.lm.step, self.last.copy(), self.state)
        else:
            out = self._timed(self.lm, self.hist.copy())
        return self._check(out)

    def advance(self, parents: np.ndarray, tokens: np.ndarray):
        parents = np.asarray(parents, np.int64)
        tokens = np.asarray(tokens, np.int64)
        self.t += 1
        self.last = tokens
        if self.stateful:
            self.state = self._timed(self.lm.reorder, self.state, parents, call=False)
        else:
            self.hist = np.concatenate([self.hist[parents], tokens[:, None]], axis=1)

    def keep(self, rows: np.ndarray):
        """Keep only ``rows`` (same tokens, no step)."""
        rows = np.asarray(rows, np.int64)
        self.last = self.last[rows]
        if self.stateful:
            self.state = self._timed(self.lm.reorder, self.state, rows, call=False)
        else:
            self.hist = self.hist[rows]

    def branch(self, state):
        """Stateful only: a private copy of a one-row ``state`` (so that siblings
        sharing it are not disturbed)."""
        return self._timed(self.lm.reorder, state, np.zeros(1, np.int64), call=False)

    def _timed(self, fn, *args, call=True):
        """Run a model method; its time is LM time; ``call``: it is a forward pass."""
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.stats.lm_time_s += time.perf_counter() - t0
            self.stats.lm_calls += call

    def _check(self, out):
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
            _token(self.bos, "bos", self.N)
            for i in self.eos:
                _token(i, "eos", self.N)
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


def _token(value, name: str, N: int | None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a token id (int), got {value!r} ({type(value).__name__})")
    value = int(value)
    # before the vocabulary size is known, ids must at least fit the int64 token arrays
    if value < 0 or value >= (N if N is not None else INT64_MAX + 1):
        bound = N if N is not None else "N (the vocabulary size; at most 2**63 - 1)"
        raise ValueError(f"{name} must be a token id in [0, {bound}), got {value}")
    return value


def _eos(eos, N: int | None) -> tuple[int, ...]:
    if eos is None:
        return ()
    ids = [eos] if isinstance(eos, (int, np.integer)) and not isinstance(eos, bool) else eos
    try:
        ids = list(ids)
    except TypeError:
        raise TypeError(f"eos must be a token id, a list of ids or None, got {eos!r}") from None
    if not ids:
        raise ValueError("eos must not be an empty list (use None for no end token)")
    return tuple(sorted({_token(i, "eos", N) for i in ids}))


# ---------------------------------------------------------------- TreeLM

def _check_name(tok, what: str) -> None:
    """A token name: a non-empty str without whitespace (``decode`` joins with spaces)."""
    if not isinstance(tok, str):
        raise TypeError(f"{what} must be a string, got {tok!r} ({type(tok).__name__})")
    if not tok or tok.split() != [tok]:
        raise ValueError(f"{what} must be a non-empty string without whitespace (decode joins "
                         f"tokens with spaces), got {tok!r}")


def _where(path) -> str:
    return "tree" + "".join(f"[{t!r}]" for t in path)


def _parse_tree(tree, ids: dict, vocab: list, bos: str) -> list[dict]:
    """Check ``tree`` and number its nodes: per node, {token id: (log_prob, child node or
    None for a leaf)}; node 0 is the root.  Token ids are given in depth-first order of
    first appearance.  Iterative (a deep tree must not hit the recursion limit); a subtree
    object used twice becomes one node, a subtree inside itself is an error."""
    if not isinstance(tree, Mapping):
        raise TypeError("tree must be a mapping {token: log_prob or (log_prob, subtree)}, "
                        f"got {type(tree).__name__}")
    if not tree:
        raise ValueError("tree must list at least one continuation of the start token")
    edges: list[dict] = [{}]
    node_of = {id(tree): 0}
    open_ = {id(tree)}                        # subtrees on the current path
    stack = [(0, iter(tree.items()), id(tree))]
    path: list[str] = []                      # the tokens leading to stack[-1]
    while stack:
        node, items, key = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            open_.discard(key)
            if path:
                path.pop()
            continue
        tok, val = item
        where = _where(path + [tok] if isinstance(tok, str) else path)
        if not isinstance(tok, str):
            raise TypeError(f"tree tokens must be strings, got {tok!r} ({type(tok).__name__}) "
                            f"in {where}")
        _check_name(tok, f"tree token {where}")
        if tok == bos:
            raise ValueError(f"{where}: the start token {bos!r} cannot be a continuation")
        if isinstance(val, (tuple, list)):
            if len(val) != 2:
                raise ValueError(f"{where} must be a log-probability or a pair (log_prob, "
                                 f"subtree), got a {type(val).__name__} of length {len(val)}")
            lp, sub = val
            if not isinstance(sub, Mapping):
                raise TypeError(f"the subtree of {where} must be a mapping {{token: ...}}, "
                                f"got {type(sub).__name__}")
        else:
            lp, sub = val, None
        if isinstance(lp, (bool, np.bool_)) or not isinstance(lp, numbers.Real):
            hint = " (a subtree goes in a pair: (log_prob, subtree))" if isinstance(
                lp, Mapping) else ""
            raise TypeError(f"the log-probability of {where} must be a real number, got "
                            f"{lp!r} ({type(lp).__name__}){hint}")
        lp = float(lp)
        if not lp <= 0.0:
            raise ValueError(f"edge log-probability of {where} must be <= 0, got {lp}")
        if tok not in ids:
            ids[tok] = len(vocab)
            vocab.append(tok)
        child = None
        if sub:
            if id(sub) in open_:
                raise ValueError(f"{where} contains its own ancestor: a tree cannot be cyclic")
            child = node_of.get(id(sub))
            if child is None:
                child = node_of[id(sub)] = len(edges)
                edges.append({})
                open_.add(id(sub))
                stack.append((child, iter(sub.items()), id(sub)))
                path.append(tok)
        edges[node][ids[tok]] = (lp, child)
    return edges


class TreeLM:
    """A language model given as a tree of tokens with edge log-probabilities.

    ``tree`` maps a token (a non-empty str without spaces) to either its
    log-probability (a leaf; a real number <= 0, -inf allowed) or a pair
    ``(log_prob, subtree)`` (tuple or list, as JSON gives); the top level holds
    the continuations of ⟨BOS⟩.  Continuations not listed have log-probability
    -inf.  A malformed tree raises TypeError/ValueError naming the offending entry.  Token ids: ⟨BOS⟩ is 0,
    then ``eos`` if given, then the tree's tokens in order of first appearance.

    Both protocols: ``lm(prefixes)`` and ``initial_state/step/reorder`` (the
    state is the tree node of each row).  ``vocab`` (id -> token), ``bos``,
    ``eos`` (id or None), ``decode(tokens) -> str``.
    """

    normalized = True

    def __init__(self, tree: Mapping, *, bos: str = "<BOS>", eos: str | None = None):
        _check_name(bos, "bos")
        if eos is not None:
            _check_name(eos, "eos")
            if eos == bos:
                raise ValueError(f"eos must differ from bos, both are {bos!r}")
        self.vocab: list[str] = [bos] + ([eos] if eos is not None else [])
        self._ids = {tok: i for i, tok in enumerate(self.vocab)}
        self.bos = 0
        self.eos = self._ids[eos] if eos is not None else None
        edges = _parse_tree(tree, self._ids, self.vocab, bos)
        self.vocab_size = len(self.vocab)
        n_nodes = len(edges) + 1                         # + one dead node for pruned paths
        self._dead = n_nodes - 1
        self._rows = np.full((n_nodes, self.vocab_size), -np.inf)
        self._child = np.full((n_nodes, self.vocab_size), self._dead, np.int64)
        for node, out in enumerate(edges):
            for tok, (lp, child) in out.items():
                self._rows[node, tok] = lp
                self._child[node, tok] = self._dead if child is None else child
        self._rows.setflags(write=False)

    @classmethod
    def from_paths(cls, paths: Mapping[Sequence[str], float], **kwargs) -> "TreeLM":
        """Build from ``{(w1, ..., wt): log p(wt | w1..wt-1)}``; every proper
        prefix of a listed path must be listed too."""
        if not isinstance(paths, Mapping):
            raise TypeError("paths must be a mapping {(token, ...): log_prob}, got "
                            f"{type(paths).__name__}")
        for path in paths:
            if isinstance(path, str) or not isinstance(path, Sequence) or not path:
                raise TypeError(f"paths keys must be non-empty tuples of tokens, got {path!r}")
        tree: dict = {}
        for path in sorted(paths, key=len):
            node = tree
            for tok in path[:-1]:
                if tok not in node:
                    raise ValueError(f"path {tuple(path)} is listed but its prefix ending in "
                                     f"{tok!r} is not")
                lp, children = node[tok] if isinstance(node[tok], tuple) else (node[tok], {})
                node[tok] = (lp, children)
                node = children
            node[path[-1]] = paths[path]
        return cls(tree, **kwargs)

    def decode(self, tokens) -> str:
        """Tokens joined by spaces, ⟨BOS⟩ and ``eos`` left out."""
        skip = {self.bos, self.eos}
        return " ".join(self.vocab[int(t)] for t in tokens if int(t) not in skip)

    def encode(self, text: str) -> list[int]:
        return [self._ids[w] for w in text.split()]

    # stateful protocol: the state is each row's node (before BOS: -1)
    def initial_state(self, batch: int):
        return np.full(batch, -1, np.int64)

    def step(self, tokens, state):
        tokens = np.asarray(tokens, np.int64)
        node = np.where(state < 0, np.where(tokens == self.bos, 0, self._dead),
                        self._child[np.maximum(state, 0), tokens])
        return self._rows[node], node

    def reorder(self, state, indices):
        return state[np.asarray(indices, np.int64)]

    # callable protocol
    def __call__(self, prefixes):
        prefixes = np.asarray(prefixes, np.int64)
        if prefixes.ndim != 2 or prefixes.shape[1] < 1:
            raise ValueError(f"prefixes must be (B, t) with t >= 1, got shape {prefixes.shape}")
        node = np.where(prefixes[:, 0] == self.bos, 0, self._dead)
        for j in range(1, prefixes.shape[1]):
            node = self._child[node, prefixes[:, j]]
        return self._rows[node]
