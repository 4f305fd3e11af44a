"""Benchmark cases and the runner behind ``fastdl bench`` and ``bench/``."""
from fastdl.bench.case import Case, all_cases, register
from fastdl.bench.runner import run_cases

__all__ = ["Case", "all_cases", "register", "run_cases"]
