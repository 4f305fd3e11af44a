"""Shared by the tests/test_decode_search_*.py modules: a random table language model that
speaks both protocols, a hypothesis strategy of small ones, and brute-force and plain-Python
beam-search references.
"""

import math
import zlib

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st


HYP = settings(max_examples=25, deadline=None)
NEG_INF = -math.inf


def _lsm(x):
    x = np.asarray(x, np.float64)
    m = x[np.isfinite(x)].max()
    return x - (m + np.log(np.exp(x - m).sum()))


class TableLM:
    """A random LM over N tokens: one row of log-softmaxed random logits per full prefix
    (⟨BOS⟩ included), made on first use from a hash of (seed, prefix).

    Both protocols (the state is the list of each row's prefix tuple); records its
    forward calls, the ``reorder`` indices and the arrays it handed out.
    ``levels``: integer logits in [0, levels) (exact ties); ``inf_frac``: that share of
    a row's entries is -inf (at least one stays finite unless ``dead`` says so).
    """

    def __init__(self, N, seed=0, *, levels=None, inf_frac=0.0, dtype=np.float64,
                 logits=False, declare=True, bos=0):
        self.N, self.seed, self.levels, self.inf_frac = N, seed, levels, inf_frac
        self.dtype, self.logits, self.bos = np.dtype(dtype), logits, bos
        if declare:
            self.vocab_size = N
        if logits:
            self.normalized = False
        self._rows = {}
        self.calls = []           # shapes of forward inputs / token batches
        self.reorders = []        # indices given to reorder
        self.inits = []
        self.returned = []        # (array handed out, its copy)

    def raw(self, prefix):
        """The row (logits if ``logits`` else log-probs) for a full prefix."""
        prefix = tuple(int(p) for p in prefix)
        if prefix not in self._rows:
            rng = np.random.default_rng(zlib.crc32(repr((self.seed, prefix)).encode()))
            if self.levels is None:
                x = rng.standard_normal(self.N) * 2.0
            else:
                x = rng.integers(0, self.levels, self.N).astype(np.float64)
            if self.inf_frac:
                drop = rng.random(self.N) < self.inf_frac
                if drop.all():
                    drop[rng.integers(self.N)] = False
                x[drop] = NEG_INF
            row = x if self.logits else _lsm(x)
            self._rows[prefix] = row.astype(self.dtype)
        return self._rows[prefix]

    def logp(self, prefix):
        """float64 log-probabilities of the next token after a full prefix."""
        row = self.raw(prefix)
        return _lsm(row) if self.logits else row

    def _out(self, prefixes):
        out = np.stack([self.raw(p) for p in prefixes]).astype(self.dtype)
        self.returned.append((out, out.copy()))
        return out

    def __call__(self, prefixes):
        assert prefixes.dtype == np.int64 and prefixes.ndim == 2
        assert (prefixes[:, 0] == self.bos).all()
        self.calls.append(prefixes.shape)
        return self._out([tuple(r) for r in prefixes.tolist()])

    def initial_state(self, batch):
        self.inits.append(batch)
        return [()] * batch

    def step(self, tokens, state):
        assert tokens.dtype == np.int64 and tokens.shape == (len(state),)
        self.calls.append(tokens.shape)
        new = [s + (int(t),) for s, t in zip(state, tokens.tolist())]
        assert all(p[0] == self.bos for p in new)
        return self._out(new), new

    def reorder(self, state, indices):
        indices = np.asarray(indices)
        self.reorders.append(indices.copy())
        return [state[i] for i in indices.tolist()]

    def seq_logp(self, tokens):
        """Σ log p, summed left to right in float64 (as the searches do)."""
        s, prefix = 0.0, (self.bos,)
        for t in tokens:
            s = s + float(self.logp(prefix)[t])
            prefix += (t,)
        return s


def callable_only(lm):
    """A plain wrapper: forces the callable protocol."""
    return lambda p: lm(p)


@st.composite
def small_lms(draw, max_seqs=256, max_N=6, max_T=4, min_N=1):
    N = draw(st.integers(min_N, max_N))
    T = draw(st.integers(1, max_T).filter(lambda t: N ** t <= max_seqs))
    seed = draw(st.integers(0, 2 ** 20))
    return N, T, seed


def toks(hyps):
    return [h.tokens for h in hyps]


def lps(hyps):
    return [h.log_prob for h in hyps]


def ref_beam(lm, N, B, T):
    """Algorithm 1: one ⟨BOS⟩ beam; each step scores the B_t×N candidates and keeps the
    best B finite ones by score, ties by the lower flat index b*N + j."""
    beams = [((), 0.0)]
    for _ in range(T):
        cands = []
        for b, (seq, s) in enumerate(beams):
            lp = lm.logp((lm.bos,) + seq)
            cands += [(s + float(lp[j]), b * N + j, seq + (j,)) for j in range(N)]
        cands = sorted((c for c in cands if c[0] > NEG_INF), key=lambda c: (-c[0], c[1]))
        if not cands:
            raise ValueError("no finite sequence")
        beams = [(c[2], c[0]) for c in cands[:B]]
    return beams


def ref_beam_eos(lm, N, B, T, eos, alpha=0.0, early_stopping=True, num_return=None,
                 min_len=0):
    """Hugging Face's ``GenerationMixin._beam_search`` (transformers 4.50+, still so in 5.x)
    for one sequence, transcribed from its tensors into lists.

    Per step t (t tokens after the step): ``log_softmax``, then the min-length ban on eos,
    plus the running beam's score; the top K = max(2, 1 + n_eos)·B candidates of all
    beams×N; a candidate *hits* when its token is eos or it has T tokens
    (MaxLengthCriteria); the new running beams are the best B candidates that did not hit
    (``_get_running_beams_for_next_iteration``); hitting candidates of rank < B
    (``top_num_beam_mask``) score lp / t^α and are merged with the B finished slots, the
    best B kept, earlier entries first on ties (``_update_finished_beams``: torch.cat of
    old slots then candidates, then topk) — unless the slots were already full with
    early_stopping=True or the heuristic already said stop.  Then
    ``_check_early_stop_heuristic`` (improvement possible unless every slot is finished and
    worst finished >= best running / L^α, L = T for "never" with α > 0, else t) and
    ``_beam_search_has_unfinished_sequences`` (stop when no improvement is possible, or
    early_stopping is True and every slot is finished, or every candidate hit).  The
    result is the first num_return slots.

    Two deliberate differences, both also fastdl's: step 1 expands one ⟨BOS⟩ (HF gets the
    same by scoring B-1 copies -1e9), and -inf candidates are never kept (HF would fill
    with -1e9 sentinels); when no running beam is left the search ends.
    """
    eos = set(eos)
    num_return = B if num_return is None else num_return
    K = max(2, 1 + len(eos)) * B

    finished = []                           # slots: (score, log_prob, tokens), best first
    running = [((), 0.0)]                   # (tokens, accumulated log-prob), best first
    heuristic_unsatisfied = True
    for t in range(1, T + 1):
        cands = []
        for b, (seq, s) in enumerate(running):
            lp = lm.logp((lm.bos,) + seq).copy()
            if t - 1 < min_len:
                lp[list(eos)] = NEG_INF
            cands += [(s + float(lp[j]), b * N + j, seq + (j,)) for j in range(N)]
        cands.sort(key=lambda c: (-c[0], c[1]))            # torch.topk, ties by flat index
        top = [c for c in cands[:K] if c[0] > NEG_INF]
        hits = [c[2][-1] in eos or t == T for c in top]
        running = [(c[2], c[0]) for c, h in zip(top, hits) if not h][:B]
        full = len(finished) == B
        if not (full and early_stopping is True) and heuristic_unsatisfied:
            new = [(c[0] / t ** alpha if alpha else c[0], c[0], c[2])
                   for rank, (c, h) in enumerate(zip(top, hits)) if h and rank < B]
            merged = list(enumerate(finished + new))        # old slots first: win ties
            merged.sort(key=lambda e: (-e[1][0], e[0]))
            finished = [e for _, e in merged[:B]]
        if not running:
            if not finished:
                raise ValueError("no finite sequence")
            break
        L = T if (early_stopping == "never" and alpha > 0) else t
        best = running[0][1] / L ** alpha if alpha else running[0][1]
        full = len(finished) == B
        heuristic_unsatisfied = heuristic_unsatisfied and not (full and finished[-1][0] >= best)
        if not heuristic_unsatisfied or (full and early_stopping is True) or all(hits):
            break
    return [(seq, lp, score) for score, lp, seq in finished[:num_return]]


class _TreeAdapter:
    """TreeLM behind the ``logp(prefix)`` interface of the references."""

    def __init__(self, lm):
        self.lm, self.bos = lm, lm.bos

    def logp(self, prefix):
        return self.lm(np.array([prefix], np.int64))[0].astype(np.float64)
