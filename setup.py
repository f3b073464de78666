"""Compiles the C core (csrc/) into dpdpu._native with cffi; metadata lives in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["csrc/build_native.py:ffibuilder"])
