"""Decoding: language-model protocols, searches, sampling and their kernels.

``fastdl.decode.examples.shapes_lm()`` is a small tree where beam search loses to greedy::

    >>> from fastdl.decode import greedy, beam_search, exact_search, examples
    >>> lm = examples.shapes_lm()
    >>> [(lm.decode(h.tokens), round(h.log_prob, 1)) for h in beam_search(lm, 2, 3, bos=lm.bos)]
    [('a blue square', -9.9), ('a red circle', -10.0)]
"""
from fastdl.decode import examples
from fastdl.decode.generate import GenerateOutput, generate
from fastdl.decode.lm import Logits, TreeLM
from fastdl.decode.ops import DECODE_OPS, beam_topk, log_softmax, topk
from fastdl.decode.sampling import sample
from fastdl.decode.search import (Hypothesis, SearchStats, beam_search, exact_search,
                                  exhaustive_search, greedy)

__all__ = ["topk", "log_softmax", "beam_topk", "DECODE_OPS", "Logits", "TreeLM", "Hypothesis",
           "SearchStats", "greedy", "beam_search", "exhaustive_search", "exact_search", "sample",
           "examples", "generate", "GenerateOutput"]


def __getattr__(name):
    # fastdl.decode.hf imports torch and transformers only when a model is wrapped, but
    # the module itself is loaded on first use of the name
    if name == "hf":
        import importlib
        return importlib.import_module("fastdl.decode.hf")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
