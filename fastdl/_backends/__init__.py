"""Built-in backends: ``numpy`` (reference) and ``cython`` (fast, default)."""
