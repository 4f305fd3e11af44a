"""fastdl.decode searches: greedy, beam_search, exhaustive_search, exact_search.

The document's shapes example (Question 2.4), then every search against brute force and
plain-Python references of beam search (plain, and Hugging Face's current `_beam_search` with eos)
on small random language models, both LM protocols, eos / length penalty / early stopping
/ min_len / no_repeat_ngram_size, the stats record, argument errors, edge cases and the
decoding kernels' tie / NaN / empty-input rules.
"""
import itertools
import math
import time
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdl.decode import (Logits, TreeLM, beam_search, beam_topk, examples, exact_search,
                           exhaustive_search, greedy, log_softmax, topk)

HYP = settings(max_examples=25, deadline=None)
NEG_INF = -math.inf


# ---------------------------------------------------------------- a random LM (both protocols)

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


def both(lm_factory):
    """(stateful LM, callable wrapper of a fresh LM) built by ``lm_factory``."""
    a, b = lm_factory(), lm_factory()
    return a, callable_only(b), b


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


# ---------------------------------------------------------------- references

def brute_force(lm, N, T, eos=()):
    """Every sequence of T tokens, or ending in eos, with its log-prob: sorted best
    first, ties in token order."""
    eos = set(eos)
    out = []

    def rec(prefix, s):
        for j in range(N):
            lp = float(lm.logp((lm.bos,) + prefix)[j])
            if lp == NEG_INF:
                continue
            seq, sc = prefix + (j,), s + lp
            if j in eos or len(seq) == T:
                out.append((seq, sc))
            else:
                rec(seq, sc)

    rec((), 0.0)
    out.sort(key=lambda e: (-e[1], e[0]))
    return out


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


# ---------------------------------------------------------------- the document's example

@pytest.fixture
def shapes():
    return examples.shapes_lm()


def _decoded(lm, hyps):
    return [(lm.decode(h.tokens), h.log_prob) for h in hyps]


def test_doc_greedy(shapes):
    (h,) = greedy(shapes, 3, bos=shapes.bos)
    assert shapes.decode(h.tokens) == "the red rectangle"
    assert h.tokens == tuple(shapes.encode("the red rectangle"))
    assert h.log_prob == pytest.approx(-9.7) and h.score == pytest.approx(-9.7)


def test_doc_beam_width_2(shapes):
    hyps = beam_search(shapes, 2, 3, bos=shapes.bos)
    assert [shapes.decode(h.tokens) for h in hyps] == ["a blue square", "a red circle"]
    assert lps(hyps) == pytest.approx([-9.9, -10.0])
    assert [h.tokens for h in hyps] == [tuple(shapes.encode("a blue square")),
                                        tuple(shapes.encode("a red circle"))]


def test_doc_beam_loses_to_greedy_and_exact(shapes):
    g = greedy(shapes, 3, bos=shapes.bos)[0]
    b = beam_search(shapes, 2, 3, bos=shapes.bos)[0]
    e = exact_search(shapes, 3, bos=shapes.bos)[0]
    x = exhaustive_search(shapes, 3, bos=shapes.bos)[0]
    assert b.log_prob < g.log_prob
    assert shapes.decode(e.tokens) == shapes.decode(x.tokens) == "the red rectangle"
    assert e.log_prob == pytest.approx(-9.7) and x.log_prob == pytest.approx(-9.7)
    assert e.tokens == x.tokens == g.tokens


def test_finished_beams_kept_at_max_len():
    """The best sequence reaches max_len at the step where the finished list fills:
    Hugging Face's generate (and greedy) return it first; it must not be dropped."""
    L = math.log
    tree = {"a": (L(.90), {"a": L(.90), "E": L(.06), "b": L(.04)}), "E": L(.05),
            "b": (L(.05), {"a": L(.5), "E": L(.5)})}
    lm = TreeLM(tree, eos="E")
    hyps = beam_search(lm, 2, 2, bos=0, eos=1)
    assert [(lm.decode(h.tokens), h.tokens) for h in hyps] == [("a a", (2, 2)),
                                                               ("a", (2, 1))]
    assert [h.log_prob for h in hyps] == pytest.approx([L(.81), L(.9 * .06)])
    assert hyps[0].tokens == greedy(lm, 2, bos=0, eos=1)[0].tokens
    for early in (True, False, "never"):
        got = beam_search(lm, 2, 2, bos=0, eos=1, early_stopping=early)
        want = ref_beam_eos(_TreeAdapter(lm), lm.vocab_size, 2, 2, [1], 0.0, early)
        assert [(h.tokens, h.log_prob) for h in got] == [(s, lp) for s, lp, _ in want]


def test_doc_exhaustive_ranking(shapes):
    hyps = exhaustive_search(shapes, 3, bos=shapes.bos, top=5)
    assert _decoded(shapes, hyps) == [
        ("the red rectangle", pytest.approx(-9.7)), ("a blue square", pytest.approx(-9.9)),
        ("a red circle", pytest.approx(-10.0)), ("a red square", pytest.approx(-10.2)),
        ("a blue ellipse", pytest.approx(-10.3))]


def test_doc_exhaustive_never_returns_pruned_paths(shapes):
    hyps = exhaustive_search(shapes, 3, bos=shapes.bos, top=10)
    assert len(hyps) == 5                     # the tree's 5 finite 3-token paths, no -inf ones
    assert all(h.log_prob > -math.inf for h in hyps)


def test_exhaustive_no_finite_sequence_raises(shapes):
    with pytest.raises(ValueError, match="-inf"):
        exhaustive_search(shapes, 4, bos=shapes.bos)


def test_doc_trace_matches_table(shapes):
    hyps = beam_search(shapes, 2, 3, bos=shapes.bos, trace=True)
    trace = hyps[0].stats.trace
    assert [s["step"] for s in trace] == [1, 2, 3]

    def words(entries):
        return sorted((shapes.decode(p), shapes.vocab[j], round(s, 6)) for p, j, s in entries)

    def close(got, want):
        assert len(got) == len(want)
        for (gp, gt, gs), (wp, wt, ws) in zip(got, sorted(want)):
            assert (gp, gt) == (wp, wt)
            assert gs == pytest.approx(ws)

    close(words(trace[0]["candidates"]), [("", "the", -1.7), ("", "a", -2.0)])
    close(words(trace[1]["candidates"]), [("the", "green", -5.3), ("the", "red", -5.0),
                                          ("a", "blue", -4.7), ("a", "red", -4.9)])
    close(words(trace[2]["candidates"]), [("a blue", "ellipse", -10.3),
                                          ("a blue", "square", -9.9),
                                          ("a red", "circle", -10.0),
                                          ("a red", "square", -10.2)])
    sel = [(shapes.decode(p), shapes.vocab[j], s) for p, j, s in trace[1]["selected"]]
    assert [(p, w) for p, w, _ in sel] == [("a", "blue"), ("a", "red")]
    assert [s for *_, s in sel] == pytest.approx([-4.7, -4.9])
    for step in trace:
        for p, j, s in step["candidates"] + step["selected"]:
            assert isinstance(p, tuple) and isinstance(j, int) and isinstance(s, float)
    assert beam_search(shapes, 2, 3, bos=shapes.bos)[0].stats.trace is None


def test_doc_both_protocols(shapes):
    wrapped = callable_only(shapes)
    for search in (lambda lm: beam_search(lm, 2, 3, bos=0), lambda lm: greedy(lm, 3, bos=0),
                   lambda lm: exact_search(lm, 3, bos=0),
                   lambda lm: exhaustive_search(lm, 3, bos=0, top=3)):
        a, b = search(shapes), search(wrapped)
        assert toks(a) == toks(b) and lps(a) == lps(b)
        assert a[0].stats.lm_calls == b[0].stats.lm_calls


def test_doc_too_long_raises(shapes):
    # every path of the tree ends after 2 or 3 tokens: nothing of length 4 is finite
    for search in (lambda: greedy(shapes, 4, bos=0), lambda: beam_search(shapes, 2, 4, bos=0),
                   lambda: exact_search(shapes, 4, bos=0)):
        with pytest.raises(ValueError, match="-inf"):
            search()


# ---------------------------------------------------------------- against brute force

@HYP
@given(small_lms(max_seqs=256))
def test_exhaustive_equals_brute_force(case):
    N, T, seed = case
    lm = TableLM(N, seed)
    bf = brute_force(lm, N, T)
    got = exhaustive_search(lm, T, bos=0, top=N ** T)
    assert toks(got) == [s for s, _ in bf]
    assert lps(got) == [v for _, v in bf]
    assert [h.score for h in got] == lps(got)


@HYP
@given(small_lms(max_seqs=256, min_N=2), st.integers(1, 3), st.sampled_from([0.0, 0.3]))
def test_exhaustive_and_exact_with_eos_equal_brute_force(case, n_eos, inf_frac):
    N, T, seed = case
    eos = list(range(1, min(N, 1 + n_eos)))
    lm = TableLM(N, seed, inf_frac=inf_frac)
    bf = brute_force(lm, N, T, eos)
    got = exhaustive_search(lm, T, bos=0, eos=eos, top=len(bf) + 5)   # finite ones only
    assert toks(got) == [s for s, _ in bf] and lps(got) == [v for _, v in bf]
    ex = exact_search(lm, T, bos=0, eos=eos)
    assert ex[0].tokens == bf[0][0] and ex[0].log_prob == bf[0][1]
    for h in got:
        assert len(h.tokens) == T or h.tokens[-1] in eos
        assert all(t not in eos for t in h.tokens[:-1])


@HYP
@given(small_lms(max_seqs=1296), st.sampled_from([None, 3]), st.sampled_from([0.0, 0.4]))
def test_exact_equals_exhaustive(case, levels, inf_frac):
    N, T, seed = case
    lm = TableLM(N, seed, levels=levels, inf_frac=inf_frac)
    ex = exact_search(lm, T, bos=0)
    top = exhaustive_search(lm, T, bos=0, top=N ** T)
    assert ex[0].log_prob == top[0].log_prob
    best = {h.tokens for h in top if h.log_prob == top[0].log_prob}
    assert ex[0].tokens in best
    if len(best) == 1:
        assert ex[0].tokens == top[0].tokens
    assert ex[0].log_prob == lm.seq_logp(ex[0].tokens)
    st_ = ex[0].stats
    assert st_.heap_pushes > 0 and st_.heap_pops > 0 and st_.heap_pops <= st_.heap_pushes
    assert 1 <= st_.lm_calls <= sum(N ** t for t in range(T))


@HYP
@given(small_lms(max_seqs=1296))
def test_wide_beam_finds_optimum(case):
    N, T, seed = case
    lm = TableLM(N, seed)
    best = exhaustive_search(lm, T, bos=0)[0]
    B = N ** (T - 1)
    got = beam_search(lm, B, T, bos=0)
    assert got[0].tokens == best.tokens and got[0].log_prob == best.log_prob


@settings(max_examples=15, deadline=None)
@given(small_lms(max_seqs=64), st.sampled_from([None, 2, 3]), st.sampled_from([0.0, 0.3]))
def test_beam_equals_reference_every_width(case, levels, inf_frac):
    N, T, seed = case
    lm = TableLM(N, seed, levels=levels, inf_frac=inf_frac)
    for B in range(1, N ** T + 1):
        want = ref_beam(lm, N, B, T)
        got = beam_search(lm, B, T, bos=0)
        assert toks(got) == [s for s, _ in want], B
        assert lps(got) == [v for _, v in want], B
        assert len(got) == min(B, len(want))
    full = beam_search(lm, N ** T, T, bos=0)
    bf = brute_force(lm, N, T)
    assert lps(full) == [v for _, v in bf]


@HYP
@given(small_lms(max_seqs=1296), st.sampled_from([None, 2]))
def test_beam_width_1_is_greedy(case, levels):
    N, T, seed = case
    lm = TableLM(N, seed, levels=levels)
    g, b = greedy(lm, T, bos=0), beam_search(lm, 1, T, bos=0)
    assert toks(g) == toks(b) and lps(g) == lps(b)
    # greedy: the argmax (lowest id on ties) at every step
    seq = ()
    for _ in range(T):
        seq += (int(np.argmax(lm.logp((0,) + seq))),)
    assert g[0].tokens == seq and g[0].log_prob == lm.seq_logp(seq)


@HYP
@given(small_lms(max_seqs=256, min_N=2), st.integers(1, 2), st.integers(1, 6),
       st.sampled_from([0.0, 0.7, 1.0, -0.5, 2.0]), st.sampled_from([True, False, "never"]),
       st.integers(0, 2), st.data())
def test_beam_with_eos_equals_hf_reference(case, n_eos, B, alpha, early, min_len, data):
    N, T, seed = case
    eos = list(range(1, min(N, 1 + n_eos)))
    B = min(B, N ** T)
    nret = data.draw(st.integers(1, B))
    lm = TableLM(N, seed)
    want = ref_beam_eos(lm, N, B, T, eos, alpha, early, nret, min_len)
    got = beam_search(lm, B, T, bos=0, eos=eos, length_penalty=alpha, early_stopping=early,
                      num_return=nret, min_len=min_len)
    assert [(h.tokens, h.log_prob) for h in got] == [(s, lp) for s, lp, _ in want]
    assert [h.score for h in got] == pytest.approx([sc for *_, sc in want], rel=1e-12)
    for h in got:
        assert len(h.tokens) == T or h.tokens[-1] in eos
        assert all(t not in eos for t in h.tokens[:-1])
        if h.tokens[-1] in eos:
            assert len(h.tokens) - 1 >= min_len
        assert h.log_prob == lm.seq_logp(h.tokens)
        assert h.score == pytest.approx(h.log_prob / len(h.tokens) ** alpha, rel=1e-12)


# ---------------------------------------------------------------- protocols

SEARCHES = {
    "greedy": lambda lm, T, **kw: greedy(lm, T, bos=0, **kw),
    "beam": lambda lm, T, **kw: beam_search(lm, 3, T, bos=0, **kw),
    "beam_opts": lambda lm, T, **kw: beam_search(lm, 3, T, bos=0, min_len=1,
                                                 no_repeat_ngram_size=2, length_penalty=1.0,
                                                 early_stopping=False, **kw),
    "exhaustive": lambda lm, T, **kw: exhaustive_search(lm, T, bos=0, top=5, **kw),
    "exact": lambda lm, T, **kw: exact_search(lm, T, bos=0, **kw),
}


@pytest.mark.parametrize("name", list(SEARCHES))
@pytest.mark.parametrize("eos", [None, 1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stateful_equals_callable(name, eos, seed):
    search = SEARCHES[name]
    stateful, wrapped, inner = both(lambda: TableLM(4, seed, inf_frac=0.2))
    a, b = search(stateful, 4, eos=eos), search(wrapped, 4, eos=eos)
    assert toks(a) == toks(b) and lps(a) == lps(b) and [h.score for h in a] == [h.score for h in b]
    sa, sb = a[0].stats, b[0].stats
    assert sa.lm_calls == sb.lm_calls == len(stateful.calls) == len(inner.calls)
    for f in ("steps", "candidates_scored", "heap_pushes", "heap_pops", "hypothesis_tokens"):
        assert getattr(sa, f) == getattr(sb, f), f
    assert inner.reorders == [] and inner.inits == []        # the wrapper is only called
    assert stateful.inits and (len(stateful.reorders) > 0 or sa.lm_calls == 1)


@HYP
@given(small_lms(max_seqs=256, min_N=2), st.integers(1, 5), st.booleans(),
       st.sampled_from([True, False, "never"]))
def test_protocols_agree_random(case, B, with_eos, early):
    N, T, seed = case
    B = min(B, N ** T)
    eos = 1 if with_eos else None
    stateful, wrapped, inner = both(lambda: TableLM(N, seed, inf_frac=0.2))
    kw = dict(bos=0, eos=eos, early_stopping=early, length_penalty=0.5)
    a, b = beam_search(stateful, B, T, **kw), beam_search(wrapped, B, T, **kw)
    assert [(h.tokens, h.log_prob, h.score) for h in a] == [(h.tokens, h.log_prob, h.score)
                                                            for h in b]
    assert a[0].stats.lm_calls == b[0].stats.lm_calls == len(inner.calls)
    assert len(stateful.reorders) == max(a[0].stats.lm_calls - 1, 0) or eos is not None
    x, y = exact_search(stateful, T, bos=0, eos=eos), exact_search(wrapped, T, bos=0, eos=eos)
    assert (x[0].tokens, x[0].log_prob, x[0].stats.lm_calls) == \
        (y[0].tokens, y[0].log_prob, y[0].stats.lm_calls)


def test_reorder_follows_beams():
    T, B, N = 4, 3, 5
    lm = TableLM(N, 7)
    hyps = beam_search(lm, B, T, bos=0)
    assert lm.inits == [1]                                  # one ⟨BOS⟩ copy
    assert [s for s in lm.calls] == [(1,), (3,), (3,), (3,)]
    assert len(lm.reorders) == T - 1                        # after every step but the last
    assert [len(r) for r in lm.reorders] == [3, 3, 3]
    assert all(r.dtype == np.int64 for r in lm.reorders)
    assert (lm.reorders[0] == 0).all()                      # all children of ⟨BOS⟩
    # the indices are the parents' rows in the reference order
    beams = [((), 0.0)]
    for t in range(T - 1):
        new = ref_beam(lm, N, B, t + 1)
        parents = [[p for p, _ in beams].index(seq[:-1]) for seq, _ in new]
        assert lm.reorders[t].tolist() == parents
        beams = new
    # a model whose reorder ignores the indices goes wrong: reorder is what keeps it right
    broken = TableLM(N, 7)
    broken.reorder = lambda state, idx: [state[0]] * len(idx)
    assert toks(beam_search(broken, B, T, bos=0)) != toks(hyps)


def test_exact_search_branches_state():
    lm = TableLM(3, 5)
    a = exact_search(lm, 4, bos=0)
    b = exact_search(callable_only(TableLM(3, 5)), 4, bos=0)
    assert a[0].tokens == b[0].tokens
    assert all(r.tolist() == [0] for r in lm.reorders)      # branch: reorder(state, [0])


@pytest.mark.parametrize("name", [n for n in SEARCHES if n != "beam_opts"])
def test_logits_wrapper_equals_normalized(name):
    search = SEARCHES[name]
    lp_lm = TableLM(5, 3)
    logit_lm = TableLM(5, 3, logits=True)                   # normalized = False on the object
    raw = TableLM(5, 3, logits=True)
    del raw.normalized                                       # ... or wrapped in Logits
    wrapped = Logits(callable_only(raw))
    assert not hasattr(wrapped, "step")
    a, b, c = search(lp_lm, 3), search(logit_lm, 3), search(wrapped, 3)
    assert toks(a) == toks(b) == toks(c)
    assert lps(b) == pytest.approx(lps(a), rel=1e-9) and lps(c) == pytest.approx(lps(a), rel=1e-9)
    stateful = Logits(TableLM(5, 3, logits=True))
    d = search(stateful, 3)
    assert toks(d) == toks(a) and stateful.lm.inits           # Logits keeps the protocol


@pytest.mark.parametrize("kw", [dict(no_repeat_ngram_size=2), dict(min_len=2, eos=1)],
                         ids=["no_repeat", "min_len"])
def test_logits_model_with_bans_scores_model_log_probs(kw):
    logit_lm, lp_lm = TableLM(5, 3, logits=True), TableLM(5, 3)
    a = beam_search(logit_lm, 3, 3, bos=0, **kw)
    b = beam_search(lp_lm, 3, 3, bos=0, **kw)
    for h in a:
        assert h.log_prob == pytest.approx(logit_lm.seq_logp(h.tokens), rel=1e-9)
    assert toks(a) == toks(b)


# ---------------------------------------------------------------- eos, penalties, options

def _eos_lm():
    """Token 1 = eos; after ⟨BOS⟩: eos 0.4, 'x' (2) 0.6; after x: eos .5, y (3) .5; after
    x y: eos 1.0 (a pruned tree, hand checked)."""
    from fastdl.decode import TreeLM
    return TreeLM({"x": (math.log(0.6), {"y": (math.log(0.5), {"</s>": 0.0}),
                                          "</s>": math.log(0.5)}),
                   "</s>": math.log(0.4)}, eos="</s>")


def test_eos_kept_and_ends_hypothesis():
    lm = _eos_lm()
    assert lm.eos == 1 and lm.vocab[:2] == ["<BOS>", "</s>"]
    hyps = beam_search(lm, 3, 5, bos=lm.bos, eos=lm.eos)
    assert [h.tokens for h in hyps] == [(1,), (2, 1), (2, 3, 1)]
    assert lps(hyps) == pytest.approx([math.log(0.4), math.log(0.3), math.log(0.3)])
    assert all(lm.bos not in h.tokens for h in hyps)
    g = greedy(lm, 5, bos=0, eos=1)[0]
    assert g.tokens == (2, 1) and g.log_prob == pytest.approx(math.log(0.3))
    assert exact_search(lm, 5, bos=0, eos=1)[0].tokens == (1,)
    assert [h.tokens for h in exhaustive_search(lm, 5, bos=0, eos=1, top=3)] == \
        [(1,), (2, 1), (2, 3, 1)]


def test_length_penalty_orders_by_normalized_score():
    lm = _eos_lm()
    for alpha in (0.0, 0.5, 1.0, 2.0, -1.0):
        hyps = beam_search(lm, 3, 5, bos=0, eos=1, length_penalty=alpha, early_stopping=False)
        for h in hyps:
            assert h.score == pytest.approx(h.log_prob / len(h.tokens) ** alpha)
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
    # α = 2: the long hypotheses win (log .3 / 9 > log .4 / 1)
    hyps = beam_search(lm, 3, 5, bos=0, eos=1, length_penalty=2.0, early_stopping=False)
    assert hyps[0].tokens == (2, 3, 1) and hyps[-1].tokens == (1,)


def test_num_return():
    lm = TableLM(4, 11)
    full = beam_search(lm, 4, 3, bos=0)
    assert len(full) == 4                                      # default: beam_width
    for n in range(1, 5):
        got = beam_search(lm, 4, 3, bos=0, num_return=n)
        assert toks(got) == toks(full)[:n] and lps(got) == lps(full)[:n]
    assert [h.tokens for h in exhaustive_search(lm, 3, bos=0, top=4)][0] == \
        exhaustive_search(lm, 3, bos=0)[0].tokens


def _late_winner_lm():
    """eos (1) is cheap early, but a long path is much better per token."""
    from fastdl.decode import TreeLM
    e = math.log
    return TreeLM({
        "</s>": e(0.30), "q": e(0.05),
        "a": (e(0.35), {"</s>": e(0.5), "b": (e(0.5), {"</s>": e(0.9), "c": e(0.1)})}),
        "z": (e(0.30), {"</s>": e(0.45), "y": (e(0.55), {"</s>": e(0.99), "w": e(0.01)})}),
    }, eos="</s>")


def test_early_stopping_variants():
    lm = _late_winner_lm()
    kw = dict(bos=0, eos=1, length_penalty=1.0)
    res = {es: beam_search(lm, 2, 3, early_stopping=es, **kw) for es in (True, False, "never")}
    # True: stops as soon as 2 hypotheses finished (step 2); nothing longer than 2 tokens
    assert all(len(h.tokens) <= 2 for h in res[True])
    assert res[True][0].stats.steps == 2
    # False / "never" go on and find the 3-token hypotheses that win under α = 1
    assert max(len(h.tokens) for h in res["never"]) == 3
    assert res["never"][0].score > res[True][0].score
    assert res["never"][0].stats.steps >= res[False][0].stats.steps
    for es in (True, False, "never"):
        want = ref_beam_eos(_TreeAdapter(lm), lm.vocab_size, 2, 3, [1], 1.0, es, 2)
        assert [(h.tokens, h.log_prob) for h in res[es]] == [(s, lp) for s, lp, _ in want]
    assert [h.tokens for h in res[True]] != [h.tokens for h in res["never"]]


class _TreeAdapter:
    """TreeLM behind the ``logp(prefix)`` interface of the references."""

    def __init__(self, lm):
        self.lm, self.bos = lm, lm.bos

    def logp(self, prefix):
        return self.lm(np.array([prefix], np.int64))[0].astype(np.float64)


@pytest.mark.parametrize("truthy", [1, np.True_], ids=["int1", "np_True"])
def test_early_stopping_truthy_values(truthy):
    lm = _late_winner_lm()
    kw = dict(bos=0, eos=1, length_penalty=1.0)
    want = toks(beam_search(lm, 2, 3, early_stopping=True, **kw))
    assert want != toks(beam_search(lm, 2, 3, early_stopping=False, **kw))
    try:
        got = beam_search(lm, 2, 3, early_stopping=truthy, **kw)
    except ValueError as exc:
        assert "early_stopping" in str(exc)
    else:
        assert toks(got) == want


def test_early_stopping_false_and_never_differ():
    # find a random LM where False and "never" (α > 0) give different answers, and check
    # both against the reference
    seen = False
    for seed in range(60):
        lm = TableLM(4, seed)
        kw = dict(bos=0, eos=[1], length_penalty=1.5)
        a = beam_search(lm, 2, 4, early_stopping=False, **kw)
        b = beam_search(lm, 2, 4, early_stopping="never", **kw)
        for es, got in ((False, a), ("never", b)):
            want = ref_beam_eos(lm, 4, 2, 4, [1], 1.5, es, 2)
            assert [(h.tokens, h.log_prob) for h in got] == [(s, lp) for s, lp, _ in want]
        if toks(a) != toks(b):
            seen = True
            assert b[0].stats.steps >= a[0].stats.steps
            assert b[0].score >= a[0].score
    assert seen


@pytest.mark.parametrize("min_len", [0, 1, 2, 3])
def test_min_len(min_len):
    lm = _eos_lm()
    if min_len >= 3:            # the tree's only 4-token continuation needs eos as 3rd token
        with pytest.raises(ValueError, match="-inf"):
            beam_search(lm, 3, 4, bos=0, eos=1, min_len=min_len)
        hyps = []
    else:
        hyps = beam_search(lm, 3, 4, bos=0, eos=1, min_len=min_len)
        assert hyps
    for h in hyps:
        if h.tokens[-1] == 1:
            assert len(h.tokens) - 1 >= min_len
    if min_len == 0:
        assert (1,) in toks(hyps)
    if min_len >= 1:
        assert (1,) not in toks(hyps)
    rnd = TableLM(3, 4)
    for h in beam_search(rnd, 4, 4, bos=0, eos=2, min_len=min_len):
        assert 2 not in h.tokens[:min_len]


def _ngrams(seq, n):
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_no_repeat_ngram(n, seed):
    N, T = 4 if n > 1 else 6, 5
    lm = TableLM(N, seed, levels=2)                   # ties make repeats likely without the ban
    hyps = beam_search(lm, 3, T, bos=0, no_repeat_ngram_size=n)
    assert hyps
    for h in hyps:
        grams = _ngrams((0,) + h.tokens, n)
        assert len(grams) == len(set(grams)), h.tokens
        assert h.log_prob == lm.seq_logp(h.tokens)
    plain = beam_search(lm, 3, T, bos=0)
    if any(len(set(_ngrams((0,) + h.tokens, n))) < len(_ngrams((0,) + h.tokens, n))
           for h in plain):
        assert toks(plain) != toks(hyps)


def test_no_repeat_ngram_changes_result():
    # a model that loves repeating token 1
    class Rep:
        vocab_size = 3

        def __call__(self, p):
            out = np.log(np.tile([0.1, 0.8, 0.1], (len(p), 1)))
            return out
    plain = beam_search(Rep(), 1, 4, bos=0)[0]
    assert plain.tokens == (1, 1, 1, 1)
    ban = beam_search(Rep(), 1, 4, bos=0, no_repeat_ngram_size=2)[0]
    assert ban.tokens == (1, 1, 0, 1) or len(set(_ngrams((0,) + ban.tokens, 2))) == 4
    assert ban.tokens != plain.tokens


# ---------------------------------------------------------------- stats

@HYP
@given(small_lms(max_seqs=1296), st.integers(1, 8))
def test_beam_stats(case, B):
    N, T, seed = case
    B = min(B, N ** T)
    lm = TableLM(N, seed)
    hyps = beam_search(lm, B, T, bos=0)
    s = hyps[0].stats
    rows = [min(B, N ** (t - 1)) for t in range(1, T + 1)]      # B_t: live rows at step t
    kept = [min(B, N ** t) for t in range(1, T + 1)]
    assert s.algorithm == "beam_search"
    assert s.lm_calls == T == s.steps == len(lm.calls)
    assert s.candidates_scored == sum(r * N for r in rows)
    assert s.hypothesis_tokens == sum(kept)
    assert s.prefix_copy_tokens == sum(k * t for t, k in enumerate(kept, 1))
    assert 0 <= s.lm_time_s <= s.total_time_s
    assert s.kernel_time_s >= 0 and s.search_time_s >= 0
    assert s.dead_ends == 0
    assert all(h.stats is s for h in hyps)


def test_stats_other_searches():
    lm = TableLM(3, 2)
    g = greedy(lm, 4, bos=0)[0].stats
    assert g.algorithm == "greedy" and g.lm_calls == 4
    assert g.candidates_scored == 4 * 3 and g.hypothesis_tokens == 4
    assert g.prefix_copy_tokens == 1 + 2 + 3 + 4
    x = exhaustive_search(lm, 4, bos=0)[0].stats
    assert x.algorithm == "exhaustive_search" and x.lm_calls == 4
    assert x.candidates_scored == sum(3 ** t * 3 for t in range(4))
    assert x.hypothesis_tokens == sum(3 ** t for t in range(1, 5))
    e = exact_search(lm, 4, bos=0)[0].stats
    assert e.algorithm == "exact_search"
    assert e.heap_pushes > 0 and e.heap_pops > 0
    assert e.candidates_scored == 3 * e.lm_calls and e.steps == e.lm_calls
    assert e.heap_pushes == 1 + 3 * e.lm_calls
    for s in (g, x, e):
        assert 0 <= s.lm_time_s <= s.total_time_s


def test_lm_time_is_measured():
    inner = TableLM(3, 1)

    def slow(p):
        time.sleep(0.005)
        return inner(p)
    for res in (beam_search(slow, 2, 3, bos=0), exact_search(slow, 3, bos=0)):
        s = res[0].stats
        assert s.lm_time_s >= 0.005 * s.lm_calls * 0.9
        assert s.lm_time_s <= s.total_time_s
        assert s.search_time_s == pytest.approx(s.total_time_s - s.lm_time_s)


# ---------------------------------------------------------------- inputs never modified

@pytest.mark.parametrize("name", list(SEARCHES))
@pytest.mark.parametrize("stateful", [True, False])
def test_model_outputs_not_modified(name, stateful):
    lm = TableLM(4, 9, inf_frac=0.2)
    SEARCHES[name](lm if stateful else callable_only(lm), 3, eos=1)
    assert lm.returned
    for arr, copy in lm.returned:
        np.testing.assert_array_equal(arr, copy)


def test_read_only_model_outputs_and_mutating_model():
    class Mut(TableLM):
        """Returns read-only rows, and scribbles over the arrays it is given."""

        def _out(self, prefixes):
            out = super()._out(prefixes)
            out.setflags(write=False)
            return out

        def __call__(self, prefixes):
            out = super().__call__(prefixes)
            prefixes[...] = -7
            return out

        def step(self, tokens, state):
            out = super().step(tokens, state)
            tokens[...] = -7
            return out

    for name, search in SEARCHES.items():
        want = search(TableLM(4, 5), 3, eos=1)
        for lm in (Mut(4, 5), callable_only(Mut(4, 5))):
            got = search(lm, 3, eos=1)
            assert toks(got) == toks(want) and lps(got) == lps(want), name


# ---------------------------------------------------------------- argument errors

def test_beam_width_errors():
    lm = TableLM(3, 0)
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(lm, 0, 2, bos=0)
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(lm, 10, 2, bos=0)                          # 3^2 = 9 sequences
    assert len(beam_search(lm, 9, 2, bos=0)) == 9
    with pytest.raises(TypeError, match="beam_width"):
        beam_search(lm, 2.0, 2, bos=0)
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(callable_only(lm), 4, 1, bos=0)             # N learned at the first call


@pytest.mark.parametrize("search", [
    lambda lm, T: greedy(lm, T, bos=0), lambda lm, T: beam_search(lm, 1, T, bos=0),
    lambda lm, T: exhaustive_search(lm, T, bos=0), lambda lm, T: exact_search(lm, T, bos=0)])
def test_max_len_errors(search):
    with pytest.raises(ValueError, match="max_len"):
        search(TableLM(3, 0), 0)
    with pytest.raises(TypeError, match="max_len"):
        search(TableLM(3, 0), 2.5)


@pytest.mark.parametrize("declare", [True, False])
@pytest.mark.parametrize("search", [
    lambda lm, **kw: greedy(lm, 2, **kw), lambda lm, **kw: beam_search(lm, 2, 2, **kw),
    lambda lm, **kw: exhaustive_search(lm, 2, **kw), lambda lm, **kw: exact_search(lm, 2, **kw)])
def test_bos_eos_outside_vocabulary(declare, search):
    lm = TableLM(4, 0, declare=declare)
    calls = []

    def model(p):
        calls.append(1)
        return np.tile(lm.logp((0,)), (len(p), 1))
    target = lm if declare else model
    with pytest.raises(ValueError, match="bos"):
        search(target, bos=4)
    with pytest.raises(ValueError, match="bos"):
        search(target, bos=-1)
    with pytest.raises(ValueError, match="eos"):
        search(target, bos=0, eos=4)
    with pytest.raises(ValueError, match="eos"):
        search(target, bos=0, eos=[1, 9])
    with pytest.raises(TypeError, match="bos"):
        search(target, bos="a")
    with pytest.raises(TypeError, match="bos"):
        search(target, bos=True)
    if declare:
        assert lm.calls == []                                  # caught before any call
    else:
        assert len(calls) == 3          # ... else at the first call (bos=4, eos=4, eos=[1, 9])


def test_beam_option_errors():
    lm = TableLM(3, 0)
    with pytest.raises(ValueError, match="num_return"):
        beam_search(lm, 2, 3, bos=0, num_return=3)
    with pytest.raises(ValueError, match="num_return"):
        beam_search(lm, 2, 3, bos=0, num_return=0)
    for bad in ("always", 2, None, "True", "false"):
        with pytest.raises(ValueError, match="early_stopping"):
            beam_search(lm, 2, 3, bos=0, early_stopping=bad)
    with pytest.raises(ValueError, match="min_len"):
        beam_search(lm, 2, 3, bos=0, min_len=-1)
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        beam_search(lm, 2, 3, bos=0, no_repeat_ngram_size=-1)
    with pytest.raises(ValueError, match="length_penalty"):
        beam_search(lm, 2, 3, bos=0, length_penalty=math.nan)
    with pytest.raises(ValueError, match="eos"):
        beam_search(lm, 2, 3, bos=0, eos=[])


def test_exhaustive_limit_and_exact_expansions():
    lm = TableLM(4, 0)
    with pytest.raises(ValueError, match="limit"):
        exhaustive_search(lm, 3, bos=0, limit=63)
    assert exhaustive_search(lm, 3, bos=0, limit=64)
    with pytest.raises(ValueError, match="top"):
        exhaustive_search(lm, 3, bos=0, top=0)
    calls = exact_search(lm, 4, bos=0)[0].stats.lm_calls
    with pytest.raises(ValueError, match="max_expansions"):
        exact_search(lm, 4, bos=0, max_expansions=calls - 1)
    assert exact_search(lm, 4, bos=0, max_expansions=calls)
    with pytest.raises(ValueError, match="max_expansions"):
        exact_search(lm, 4, bos=0, max_expansions=0)


def test_not_a_model():
    for search in (lambda m: greedy(m, 2, bos=0), lambda m: exact_search(m, 2, bos=0)):
        with pytest.raises(TypeError, match="lm must be callable"):
            search(object())


# ---------------------------------------------------------------- edge cases

def test_vocabulary_of_one():
    lm = TableLM(1, 0)
    for res in (greedy(lm, 3, bos=0), beam_search(lm, 1, 3, bos=0),
                exhaustive_search(lm, 3, bos=0, top=5), exact_search(lm, 3, bos=0)):
        assert toks(res) == [(0, 0, 0)] and lps(res) == [0.0]
    assert toks(beam_search(lm, 1, 3, bos=0, eos=0)) == [(0,)]
    assert toks(exhaustive_search(lm, 3, bos=0, eos=0)) == [(0,)]
    assert toks(exact_search(lm, 3, bos=0, eos=0)) == [(0,)]
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(lm, 2, 3, bos=0)


def test_max_len_one():
    lm = TableLM(5, 3)
    lp = lm.logp((0,))
    order = np.argsort(-lp, kind="stable")
    assert toks(beam_search(lm, 5, 1, bos=0)) == [(int(j),) for j in order]
    assert greedy(lm, 1, bos=0)[0].tokens == (int(order[0]),)


def test_float32_model():
    lm32 = TableLM(5, 8, dtype=np.float32)
    hyps = beam_search(lm32, 3, 3, bos=0)
    want = ref_beam(lm32, 5, 3, 3)
    assert toks(hyps) == [s for s, _ in want]
    assert lps(hyps) == pytest.approx([v for _, v in want], rel=1e-5)
    assert exact_search(lm32, 3, bos=0)[0].tokens == exhaustive_search(lm32, 3, bos=0)[0].tokens


# ---------------------------------------------------------------- kernels: ties, NaN, errors

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_topk_ties_and_nan(dtype):
    x = np.array([[1, 3, 3, np.nan, 2, np.nan, 3]], dtype)
    v, i = topk(x, 5)
    assert i.tolist() == [[3, 5, 1, 2, 6]] and i.dtype == np.int64
    assert np.isnan(v[0, :2]).all() and v[0, 2:].tolist() == [3, 3, 3] and v.dtype == dtype
    v, i = topk(np.zeros(6, dtype), 4)
    assert i.tolist() == [0, 1, 2, 3]
    v, i = topk(np.array([[5, 1], [2, 7], [9, 9]], dtype), 2, axis=0)
    assert i.tolist() == [[2, 2], [0, 1]] and v.tolist() == [[9, 9], [5, 7]]


def test_beam_topk_ties_and_dead_rows():
    lp = np.log(np.array([[0.5, 0.5], [0.5, 0.5]]))
    s, b, j = beam_topk(lp, np.array([-1.0, -1.0]), 4, normalize=False)
    assert b.tolist() == [0, 0, 1, 1] and j.tolist() == [0, 1, 0, 1]
    dead = np.array([[-np.inf, -np.inf], [0.0, -1.0]])
    s, b, j = beam_topk(dead, np.zeros(2), 4)
    assert s[:2] == pytest.approx([-np.log1p(np.exp(-1.0)), -1 - np.log1p(np.exp(-1.0))])
    assert (b[:2].tolist(), j[:2].tolist()) == ([1, 1], [0, 1])
    assert np.isneginf(s[2:]).all() and not np.isnan(s).any()


def test_kernel_errors_and_empty_inputs():
    x = np.arange(5.0)
    for k in (0, 6):
        with pytest.raises(ValueError, match="k"):
            topk(x, k)
    with pytest.raises(TypeError, match="k"):
        topk(x, 1.5)
    assert topk(x, 5)[1].tolist() == [4, 3, 2, 1, 0]
    v, i = topk(np.array([2.5]), 1)
    assert v.tolist() == [2.5] and i.tolist() == [0]
    v, i = topk(np.zeros((0, 5)), 3)
    assert v.shape == (0, 3) and i.shape == (0, 3) and i.dtype == np.int64
    assert log_softmax(np.zeros((0, 4))).shape == (0, 4)
    assert log_softmax(np.zeros((3, 0))).shape == (3, 0)
    assert log_softmax(np.array([4.0])).tolist() == [0.0]
    with pytest.raises(ValueError, match="k"):
        topk(np.zeros((3, 0)), 1)
    with pytest.raises(ValueError, match="0-d"):
        topk(np.float64(1.0), 1)
    for bad in (np.zeros(3), np.zeros((2, 2, 2))):
        with pytest.raises(ValueError, match="2-D"):
            beam_topk(bad, np.zeros(2), 1)
    with pytest.raises(ValueError, match="beam_scores"):
        beam_topk(np.zeros((2, 3)), np.zeros(3), 1)
    with pytest.raises(ValueError, match="beam_scores"):
        beam_topk(np.zeros((2, 3)), np.array([0.0, np.nan]), 1)
    with pytest.raises(ValueError, match="k"):
        beam_topk(np.zeros((2, 3)), np.zeros(2), 7)
    with pytest.raises(ValueError, match="k"):
        beam_topk(np.zeros((0, 3)), np.zeros(0), 1)
    s, b, j = beam_topk(np.array([[0.0]]), np.array([-2.0]), 1)
    assert s.tolist() == [-2.0] and b.tolist() == [0] and j.tolist() == [0]


def test_all_neg_inf_row_no_warning():
    x = np.array([[-np.inf, -np.inf], [0.0, -1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = log_softmax(x, backend="numpy")
        beam_topk(x, np.zeros(2), 4, backend="numpy")
    assert np.isnan(out[0]).all()


def test_kernels_leave_inputs_alone():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 9))
    s = rng.standard_normal(4)
    x0, s0 = x.copy(), s.copy()
    topk(x, 3)
    log_softmax(x)
    beam_topk(x, s, 5)
    beam_topk(x, s, 5, normalize=False)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(s, s0)
