"""Builds the optional C fast path of the LoG filter (``gradmask/_banded.c``, no torch headers).

Optional: without a working C compiler the package installs all the same (one line says so) and
filters through its matrix-product path (``gradmask.laplacian.banded_available()`` says which one
is in use; the first masked step on CPU logs the same notice).
"""
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """``build_ext`` that turns a failed compile of the optional extension into one line."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any compiler failure leaves the pure-Python path
            print(f"gradmask: {ext.name} not built ({type(exc).__name__}); the LoG will run on matrix products",
                  file=sys.stderr)


setup(ext_modules=[Extension("gradmask._banded", ["gradmask/_banded.c"], extra_compile_args=["-O3"],
                             optional=True)],
      cmdclass={"build_ext": OptionalBuildExt})
