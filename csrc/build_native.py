"""cffi build script for ``dpdpu._native`` (API mode, out-of-line).

Packaging runs it through ``cffi_modules`` in ``setup.py``: ``pip install .``
(or ``pip install -e .`` for development) compiles the core.
The declarations come verbatim from the marked block of ``csrc/include/dpdpu.h``
so the C header stays the single description of the interface.
"""

from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SOURCES = ["status.c", "device.c", "pe.c", "ops.c", "crc32c.c"]


def _version() -> str:
    text = (ROOT / "dpdpu" / "_version.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("dpdpu/_version.py does not define __version__")
    return match.group(1)


def _cdef() -> str:
    header = (HERE / "include" / "dpdpu.h").read_text(encoding="utf-8")
    match = re.search(r"/\* cffi:begin \*/(.*?)/\* cffi:end \*/", header, re.DOTALL)
    if match is None:
        raise RuntimeError("dpdpu.h lacks the cffi:begin/cffi:end markers")
    return match.group(1)


ffibuilder = FFI()
ffibuilder.cdef(
    _cdef()
    + """
    /* Runs DPDPU_OP_CALLBACK tasks in Python; defined by dpdpu.runtime.native. */
    extern "Python" int dpdpu_py_callback(struct dpdpu_task *task);
    """
)
ffibuilder.set_source(
    "dpdpu._native",
    '#include "dpdpu.h"\n',
    sources=[str((HERE / name).relative_to(ROOT)) for name in SOURCES],
    include_dirs=[str((HERE / "include").relative_to(ROOT))],
    libraries=["z", "pthread"],
    define_macros=[("DPDPU_VERSION_STR", f'"{_version()}"')],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)
