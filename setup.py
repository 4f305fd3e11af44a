"""Build the Cython extensions of fastdl.

OpenMP is probed at build time: when the compiler cannot build an OpenMP
program the extensions are built serially (one line says so).  No
``-march=native``: AVX2/FMA code lives in C helpers compiled with function
target attributes and chosen at run time (fastdl/_backends/cython/src/simd.h).
"""
import glob
import os
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CY_DIR = "fastdl/_backends/cython"
SRC_DIR = CY_DIR + "/src"

# extension name -> extra C sources
MOMENTS = [SRC_DIR + f for f in ("/moments.c", "/moments_avx2.c", "/moments_avx512.c")]
NORM = [SRC_DIR + f for f in ("/normk16.c", "/normk.c", "/normk_avx2.c",
                              "/normk_avx512.c")] + MOMENTS
EXTENSIONS = {
    "_cpu": [SRC_DIR + "/team.c"],
    "_norm_stats": MOMENTS,
    "_traffic": [SRC_DIR + "/traffic.c"],
    "_norm": NORM,
    "_norm_bwd": NORM,
    "_norm16": MOMENTS,
    "_decode": [SRC_DIR + "/decodek.c", SRC_DIR + "/decodek_avx2.c", SRC_DIR + "/decodek_avx512.c"],
    "_quant": [SRC_DIR + "/" + f for f in (
        "quantk_pack.c", "quantk_pack_avx2.c", "quantk_dec.c", "quantk_gemv.c", "quantk_mt.c",
        "quantk_avx2.c", "quantk_avx512.c", "quantk_table.c")],
    "_qlut": [SRC_DIR + "/" + f for f in ("qlutk.c", "qlutk_avx2.c", "qlutk_avx512.c")],
    "_qbf16": [SRC_DIR + "/qbf16k.c", SRC_DIR + "/qbf16k_avx512.c"],
    "_rnn": [SRC_DIR + "/rnnk.c"],
    "_lora": [SRC_DIR + "/lorak.c"],
    "_qint8": [SRC_DIR + "/" + f for f in ("qi8k.c", "qi8k_avx2.c", "qi8k_avx512.c", "qi8k_amx.c")],
}

OPENMP_TEST = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return omp_get_max_threads() > 0 && n > 0 ? 0 : 1;
}
"""

# omp_pause_resource_all (OpenMP 5.0) releases a thread pool before fork; GCC
# has it from version 10 while still defining _OPENMP as 201511, so it is probed.
OPENMP_PAUSE_TEST = r"""
#include <omp.h>
int main(void) { return omp_pause_resource_all(omp_pause_hard); }
"""


def _probe(compiler, source, cflags, lflags):
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
            compiler.link_executable(objs, "probe", output_dir=tmp, extra_postargs=lflags)
        except Exception:  # noqa: BLE001 - any failure means "not available"
            return False
    return True


def _openmp_flags(compiler):
    """Return (compile_args, link_args) for OpenMP, or None if unsupported."""
    if os.environ.get("FASTDL_NO_OPENMP"):
        return None
    if compiler.compiler_type == "msvc":
        candidates = [(["/openmp"], [])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    for cflags, lflags in candidates:
        if _probe(compiler, OPENMP_TEST, cflags, lflags):
            return cflags, lflags
    return None


class BuildExt(build_ext):
    def build_extensions(self):
        ctype = self.compiler.compiler_type
        omp = _openmp_flags(self.compiler)
        pause = False
        if omp is None:
            print("fastdl: OpenMP not available with this compiler; building serial kernels")
        else:
            pause = _probe(self.compiler, OPENMP_PAUSE_TEST, *omp)
            if not pause:
                print("fastdl: no omp_pause_resource_all; forked children run single-threaded")
        if ctype == "msvc":
            base = ["/O2"]
        else:
            # fp-contract=off: scalar and SIMD twins round identically
            base = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-Wno-unused-function"]
        for ext in self.extensions:
            ext.extra_compile_args = base + (omp[0] if omp else [])
            ext.extra_link_args = omp[1] if omp else []
            if pause:
                ext.define_macros.append(("FASTDL_OMP_PAUSE", "1"))
        super().build_extensions()


def extensions():
    # every header and .pxd: an edit to one rebuilds the extensions that may include it
    # (a few seconds more than exact per-file lists, which would drift)
    headers = sorted(glob.glob(SRC_DIR + "/*.h") + glob.glob(CY_DIR + "/*.pxd"))
    exts = []
    for name, sources in EXTENSIONS.items():
        exts.append(Extension(
            f"fastdl._backends.cython.{name}",
            [f"{CY_DIR}/{name}.pyx"] + sources,
            depends=headers,
            include_dirs=[np.get_include(), SRC_DIR],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        ))
    return cythonize(
        exts,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
