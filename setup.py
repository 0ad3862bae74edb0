"""Builds csrc/*.c and the Cython bindings into one extension, hyperplane._core."""

import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
C_SOURCES = sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "csrc", "*.c")))

core = Extension(
    "hyperplane._core",
    sources=["hyperplane/_core.pyx"] + C_SOURCES,
    include_dirs=["csrc"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-function"],
)

setup(ext_modules=cythonize([core], language_level=3, compiler_directives={"boundscheck": False,
                                                                            "wraparound": False}))
