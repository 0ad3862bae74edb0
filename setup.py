"""Builds the C core's two libraries, csrc/nat/ (the NAT: table, ports, parsing and rewriting,
TCP, quotas, state) and csrc/dp/ (the data plane: rings, loop, neighbours, policer), and the
Cython bindings into one extension, hyperplane._core."""

import glob
import hashlib
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
LIBRARIES = ("nat", "dp")         # dp uses nat, never the other way round
C_SOURCES = sorted(os.path.relpath(p, HERE)
                   for lib in LIBRARIES for p in glob.glob(os.path.join(HERE, "csrc", lib, "*.c")))


def build_hash() -> str:
    """A digest of the C headers: a state file from a build whose structures differ is refused
    (csrc/nat/hp_state.h, HP_BUILD_HASH)."""
    h = hashlib.sha256()
    for p in sorted(glob.glob(os.path.join(HERE, "csrc", "*", "*.h"))):
        h.update(os.path.relpath(p, HERE).encode() + b"\0")
        with open(p, "rb") as f:
            h.update(f.read())
    return "0x" + h.hexdigest()[:16] + "ull"


core = Extension(
    "hyperplane._core",
    sources=["hyperplane/_core.pyx"] + C_SOURCES,
    include_dirs=[f"csrc/{lib}" for lib in LIBRARIES],
    define_macros=[("HP_BUILD_HASH", build_hash())],
    # Functions start on a cache line: otherwise an unrelated change that moves the code by
    # 16 bytes moves the 1M-connection lookup by 15% (docs/performance.md).
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-function",
                        "-falign-functions=64"],
)

setup(ext_modules=cythonize([core], language_level=3, compiler_directives={"boundscheck": False,
                                                                            "wraparound": False}))
