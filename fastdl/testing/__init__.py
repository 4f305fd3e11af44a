"""Testing tools for fastdl and for backend authors.

``fastdl.testing.conformance`` checks a backend against the op specs and the
NumPy reference; the helpers here give seeded generators and run code at a
chosen SIMD level or thread count.
"""
from fastdl.testing._helpers import (BUILTIN_BACKENDS, has_simd, requires_simd, rng_for, simd,
                                     simd_levels, threads)

__all__ = ["BUILTIN_BACKENDS", "has_simd", "requires_simd", "rng_for", "simd", "simd_levels",
           "threads"]
