"""Declares the one compiled extension; metadata lives in pyproject.toml.

Environment switches:
  GB_DEBUG=1     build without optimisation, with assertions and debug info
  GB_SANITIZE=1  build with AddressSanitizer + UndefinedBehaviorSanitizer
"""
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("GB_DEBUG", "") not in ("", "0")
sanitize = os.environ.get("GB_SANITIZE", "") not in ("", "0")

if sys.platform == "win32":
    # MSVC: C11 atomics (<stdatomic.h>) need these flags (VS 2022 17.5+)
    compile_args = ["/std:c11", "/experimental:c11atomics"]
    link_args = []
    if debug:
        compile_args += ["/Od", "/Zi"]
else:
    compile_args = ["-std=c11", "-Wall", "-Wno-unused-function",
                    "-Wno-unreachable-code-fallthrough"]
    link_args = []
    compile_args += ["-O0", "-g", "-UNDEBUG"] if debug else ["-O2"]
    if sanitize:
        compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
        link_args += ["-fsanitize=address,undefined"]

ext = Extension(
    "global_buffer._core",
    sources=["global_buffer/_core.pyx"],
    include_dirs=[numpy.get_include(), "global_buffer"],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                   ("GB_DEBUG", "1" if debug else "0")],
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)

setup(
    ext_modules=cythonize(
        [ext],
        compiler_directives={"language_level": "3", "embedsignature": True},
        gdb_debug=debug,
    ),
)
