"""Testing tools for fastdl and for backend authors.

``fastdl.testing.conformance`` checks a backend against the op specs and the
NumPy reference; the helpers here give seeded generators, run code at a
chosen SIMD level or thread count, and ``RandomLM`` is a deterministic random
language model for tests of decoding code; ``count_matmuls`` counts the
multiply-adds of NumPy code.
"""
from fastdl.testing._helpers import (BUILTIN_BACKENDS, bitwise_equal, fixed_teams, has_simd,
                                     requires_simd, rng_for, simd, simd_levels, threads)
from fastdl.testing._counting import MatmulCounter, count_matmuls
from fastdl.testing._lm import RandomLM, log_softmax_row

__all__ = ["BUILTIN_BACKENDS", "MatmulCounter", "RandomLM", "bitwise_equal", "count_matmuls",
           "fixed_teams", "has_simd", "log_softmax_row", "requires_simd", "rng_for", "simd", "simd_levels", "threads"]
