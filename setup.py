"""Builds the optional C fast path of the LoG filter (``gradmask/_banded.c``, no torch headers).

``optional=True``: without a C compiler the package installs all the same and filters through its
matrix-product path (``gradmask.laplacian.banded_available()`` says which one is in use).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("gradmask._banded", ["gradmask/_banded.c"], extra_compile_args=["-O3"],
                             optional=True)])
