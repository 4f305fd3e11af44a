"""Language-model protocols, and ``TreeLM``.

Two protocols; every search accepts either:

* **callable**: ``lm(prefixes) -> log_probs`` with ``prefixes`` int64 ``(B, t)``:
  each row's whole history (the prompt, or ⟨BOS⟩, then the tokens so far), result
  ``(B, N)``.  When the prompts are left-padded to one width (prompts of
  different lengths), the call is ``lm(prefixes, attention_mask=mask)`` with
  ``mask`` int64 ``(B, t)``, 0 at the padding (always on the left);
* **stateful**: ``lm.initial_state(batch)``, ``lm.step(tokens, state) ->
  (log_probs, state)`` (``tokens`` int64 ``(B,)``: the last token of each row)
  and ``lm.reorder(state, indices)`` -> the state of rows ``indices`` (int64,
  may repeat or drop rows; it must leave ``state`` itself usable), so caches
  follow the surviving beams.  The prompt goes in through an optional
  ``lm.prefill(input_ids, attention_mask) -> (log_probs, state)`` (both int64
  ``(B, P)``, left-padded); without it, ``initial_state`` and one ``step`` per
  prompt column (prompts of equal length only).  An object with
  ``initial_state``, ``step`` and ``reorder`` is used statefully.

A model returns log-probabilities (every entry <= 0; rows need not sum to 1,
e.g. a pruned tree) unless it has ``normalized = False``, or is wrapped in
``Logits(model)``: then the searches apply log-softmax to its rows.
"""
from __future__ import annotations

import numbers
from typing import Mapping, Sequence

import numpy as np

__all__ = ["Logits", "TreeLM", "vocab_size"]

INT64_MAX = 2 ** 63 - 1


class Logits:
    """Wrap a model whose outputs are unnormalized logits (``normalized = False``).

    Works for both protocols: calls, ``initial_state``, ``step`` and
    ``reorder`` are passed through.
    """

    normalized = False

    def __init__(self, lm):
        self.lm = lm
        for name in ("initial_state", "step", "reorder", "prefill", "vocab", "vocab_size", "bos",
                     "decode", "encode", "max_length", "eos_token_id", "pad_token_id",
                     "bos_token_id"):
            if hasattr(lm, name):
                setattr(self, name, getattr(lm, name))

    def __call__(self, prefixes, attention_mask=None):
        if attention_mask is None:
            return self.lm(prefixes)
        return self.lm(prefixes, attention_mask=attention_mask)


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

    def prefill(self, input_ids, attention_mask):
        """The node after each (left-padded) prompt; a prompt must start with ⟨BOS⟩."""
        node = self._walk(input_ids, attention_mask)
        return self._rows[node], node

    # callable protocol
    def __call__(self, prefixes, attention_mask=None):
        return self._rows[self._walk(prefixes, attention_mask)]

    def _walk(self, prefixes, mask):
        prefixes = np.asarray(prefixes, np.int64)
        if prefixes.ndim != 2 or prefixes.shape[1] < 1:
            raise ValueError(f"prefixes must be (B, t) with t >= 1, got shape {prefixes.shape}")
        if mask is None:
            mask = np.ones(prefixes.shape, np.int64)
        node = np.full(len(prefixes), -1, np.int64)        # -1: before ⟨BOS⟩
        for j in range(prefixes.shape[1]):
            tok, on = prefixes[:, j], np.asarray(mask)[:, j] != 0
            nxt = np.where(node < 0, np.where(tok == self.bos, 0, self._dead),
                           self._child[np.maximum(node, 0), tok])
            node = np.where(on, nxt, node)
        return np.where(node < 0, self._dead, node)
