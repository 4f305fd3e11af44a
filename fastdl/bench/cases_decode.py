"""Benchmark cases for decoding: the fused beam step, top-k and beam search end to end.

Peers: the NumPy backend; PyTorch (``torch.topk`` of ``log_softmax + beam
scores``, and ``torch.topk``); for the batched step (G prompts x B beams), a
Python loop of G 2-D calls; ``np.argpartition`` + a sort of the k; and, as
the issue defines the limit, a single read of the same array: ``x.max()``.
"""
import statistics
import time

import numpy as np


from fastdl import complexity
from fastdl.bench.case import Case, register
from fastdl.decode import beam_search, beam_topk, topk
from fastdl.decode.examples import SyntheticLM

BEAM_TARGETS = {"cython": {"vs_torch": 3.0, "vs_numpy": 3.0, "vs_limit": 3.0}}
# one batched call beats G calls (fewer dispatches and thread starts) and stays near
# the single read
BATCHED_TARGETS = {"cython": {"vs_torch": 3.0, "vs:loop of 2-D calls": 1.1, "vs_limit": 3.0}}
TOPK_TARGETS = {"cython": {"vs:np.argpartition+sort": 3.0, "vs_torch": 1.0}}


def _logits(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape, dtype=np.float32) * 3).astype(np.float32)


def _beam_topk_case(B, N):
    k = 2 * B                                  # what a beam search with eos asks for

    def setup():
        return {"x": _logits((B, N)), "s": -np.arange(B, dtype=np.float32)}

    def torch_peer(inp):
        import torch
        x, s = torch.from_numpy(inp["x"]), torch.from_numpy(inp["s"])
        return lambda: torch.topk((torch.log_softmax(x, -1) + s[:, None]).view(-1), k)

    return Case(
        name=f"decode/beam_topk/B{B}xN{N}/float32", op="beam_topk", setup=setup,
        call=lambda inp, backend: beam_topk(inp["x"], inp["s"], k, backend=backend),
        bytes_read=B * N * 4, bytes_written=k * 20, flops=6 * B * N, torch=torch_peer,
        limit=_single_read,
        quick=B in (1, 16) and N == 50257,
        targets=BEAM_TARGETS if B <= 16 else {},
        params={"B": B, "N": N, "k": k, "dtype": "float32"},
    )


def _batched_beam_topk_case(G, B, N):
    """G prompts x B beams in one call (one beam step of a batched search), against a
    Python loop of G 2-D calls and torch on the (G, B*N) candidates."""
    k = 2 * B

    def setup():
        rng = np.random.default_rng(2)
        return {"x": _logits((G, B, N)),
                "s": -rng.random((G, B), dtype=np.float32) * 10}

    def loop(inp):
        x, s = inp["x"], inp["s"]
        return lambda: [beam_topk(x[g], s[g], k) for g in range(G)]

    def torch_peer(inp):
        import torch
        x, s = torch.from_numpy(inp["x"]), torch.from_numpy(inp["s"])
        return lambda: torch.topk((torch.log_softmax(x, -1) + s[..., None]).view(G, -1), k)

    return Case(
        name=f"decode/beam_topk/G{G}xB{B}xN{N}/float32", op="beam_topk", setup=setup,
        call=lambda inp, backend: beam_topk(inp["x"], inp["s"], k, backend=backend),
        bytes_read=G * B * N * 4, bytes_written=G * k * 20, flops=6 * G * B * N,
        torch=torch_peer, limit=_single_read, peers={"loop of 2-D calls": loop},
        targets=BATCHED_TARGETS,
        params={"G": G, "B": B, "N": N, "k": k, "dtype": "float32"},
    )


def _single_read(inp):
    return {"x.max()": inp["x"].max}


def _argpartition_sort(inp):
    x, k = inp["x"], inp["k"]

    def run():
        part = np.argpartition(x, x.size - k)[x.size - k:]
        return part[np.argsort(-x[part], kind="stable")]
    return run


def _topk_case(n, k):
    def setup():
        return {"x": _logits(n, seed=1), "k": k}

    def torch_peer(inp):
        import torch
        x = torch.from_numpy(inp["x"])
        return lambda: torch.topk(x, k)

    return Case(
        name=f"decode/topk/n{n:.0e}/k{k}/float32".replace("+0", ""), op="topk", setup=setup,
        call=lambda inp, backend: topk(inp["x"], k, backend=backend),
        bytes_read=n * 4, bytes_written=k * 12, flops=n, torch=torch_peer, limit=_single_read,
        peers={"np.argpartition+sort": _argpartition_sort},
        quick=n == 10**6 and k in (10, 100),
        targets=TOPK_TARGETS if k <= 100 else {"cython": {"vs:np.argpartition+sort": 3.0}},
        params={"n": n, "k": k, "dtype": "float32"},
    )


def _beam_search_case(B=8, N=50257, T=32):
    """End to end on ``SyntheticLM`` (logits: the search normalizes each step).

    Metric ``overhead/beam_topk``: search time per step (all but the LM call)
    over the time of that step's ``beam_topk`` call inside the search (medians
    of 5 searches); ``beam_topk alone ms`` times the same call on a hot array.
    The counts are compared with the analytic formulas (fastdl.complexity):
    candidates scored (O(T·B·N)) and hypothesis memory, backpointers (O(B·T))
    against copying whole prefixes (O(B·T²))."""

    def setup():
        lm = SyntheticLM(N)
        return {"lm": lm, "step_x": lm.table[:B].copy(),
                "step_s": -np.arange(B, dtype=np.float32)}

    def call(inp, backend):
        return beam_search(inp["lm"], B, T, bos=0, backend=backend)

    def metrics(inp, backend):
        stats = [call(inp, backend)[0].stats for _ in range(5)]
        over = statistics.median(s.overhead_per_step_s for s in stats)
        step = statistics.median(s.kernel_time_s / s.steps for s in stats)
        alone = []
        for _ in range(20):
            t0 = time.perf_counter()
            beam_topk(inp["step_x"], inp["step_s"], B, backend=backend)
            alone.append(time.perf_counter() - t0)
        st = stats[0]
        return {"overhead/step ms": over * 1e3, "beam_topk in search ms": step * 1e3,
                "beam_topk alone ms": statistics.median(alone) * 1e3,
                "overhead/beam_topk": over / step,
                "candidates/analytic": st.candidates_scored / complexity.beam_candidates(B, N, T),
                "backpointer tokens": st.hypothesis_tokens,
                "prefix-copy tokens (doc)": complexity.beam_prefix_copy_tokens(B, N, T)}

    return Case(
        name=f"decode/beam_search/B{B}xN{N}xT{T}/float32", op="beam_topk", setup=setup,
        call=call, bytes_read=T * B * N * 4, bytes_written=T * B * 20, flops=6 * T * B * N,
        metrics=metrics, targets={"cython": {"max:overhead/beam_topk": 2.0}},
        params={"B": B, "N": N, "T": T, "dtype": "float32"},
    )


for _B in (1, 4, 16, 64):
    for _N in (32000, 50257, 128256):
        register(_beam_topk_case(_B, _N))
register(_batched_beam_topk_case(8, 4, 50257))
for _n in (10**6, 10**7):
    for _k in (1, 10, 100, 1000):
        register(_topk_case(_n, _k))
register(_beam_search_case())
