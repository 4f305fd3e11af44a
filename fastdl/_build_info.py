"""``fastdl.build_info()``: what was built and what this machine offers."""
from __future__ import annotations

import platform
import sysconfig

import numpy as np


def _blas(mod) -> str | None:
    try:
        cfg = mod.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older versions have no dict mode
        return None


def build_info() -> dict:
    from fastdl import __version__
    from fastdl._threads import get_num_threads

    info = {
        "version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "numpy": np.__version__,
        "numpy_blas": _blas(np),
        "num_threads": get_num_threads(),
    }
    try:
        import scipy
        info["scipy"] = scipy.__version__
        info["scipy_blas"] = _blas(scipy)
    except ImportError:
        info["scipy"] = None
    try:
        from fastdl._backends.cython import _cpu
    except Exception as exc:  # noqa: BLE001 - a diagnostic must report a broken backend, not raise
        info.update(compiled=False, compile_error=f"{type(exc).__name__}: {exc}",
                    compiler=sysconfig.get_config_var("CC"))
        return info
    info.update(
        compiled=True,
        compiler=_cpu.compiler_version(),
        openmp=_cpu.openmp_enabled(),
        openmp_max_threads=_cpu.openmp_max_threads(),
        simd_detected=_cpu.detected_simd(),
        simd_active=_cpu.active_simd(),
    )
    return info
