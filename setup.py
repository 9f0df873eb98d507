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
from setuptools.command.build_ext import build_ext


class build_ext_beside_sources(build_ext):
    """Build as usual, then also copy the compiled core next to its sources.

    README's first command, ``pip install . && python -m global_buffer demo``,
    runs in the clone, and ``python -m`` puts the current directory first on
    sys.path: Python imports the clone's ``global_buffer/``, not the copy pip
    just installed.  pip >= 21.3 builds in the source tree, so copying the
    extension there (what ``build_ext --inplace`` and ``pip install -e .`` do)
    makes that import work.  The copy comes from the same build as the
    installed one; both are replaced by the next build.  Wheels and sdists are
    unaffected (``*.so`` is not package data, see pyproject.toml); building
    from an sdist (tox) copies into pip's temporary unpacked tree, which goes
    away with it.  Rejected: having an unbuilt tree borrow the installed
    copy's core, which mixes two trees' code as soon as they differ.
    """

    def run(self):
        super().run()
        if self.inplace or getattr(self, "editable_mode", False):
            return  # setuptools has put the extension in the tree already
        try:
            self.copy_extensions_to_source()
        except OSError as e:  # e.g. a read-only checkout: the installed copy is fine
            print(f"warning: compiled core not copied into the source tree: {e}",
                  file=sys.stderr)

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
    cmdclass={"build_ext": build_ext_beside_sources},
    ext_modules=cythonize(
        [ext],
        compiler_directives={"language_level": "3", "embedsignature": True},
        gdb_debug=debug,
    ),
)
