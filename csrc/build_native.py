"""cffi build script for ``dpdpu._native`` (API mode, out-of-line).

Packaging runs it through ``cffi_modules`` in ``setup.py``: ``pip install .``
(or ``pip install -e .`` for development) compiles the core.
The declarations come verbatim from the marked blocks of ``csrc/include/dpdpu.h``
and the other ``csrc/include/dpdpu_*.h`` headers, so the C headers stay the
single description of the interface; every ``csrc/*.c`` is compiled.
"""

from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SOURCES = sorted(p.name for p in HERE.glob("*.c"))


def _version() -> str:
    text = (ROOT / "dpdpu" / "_version.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("dpdpu/_version.py does not define __version__")
    return match.group(1)


#: Public headers, the core's first: their marked blocks make up the binding.
HEADERS = ["dpdpu.h", *sorted(p.name for p in (HERE / "include").glob("dpdpu_*.h"))]


def _cdef() -> str:
    blocks = []
    for name in HEADERS:
        header = (HERE / "include" / name).read_text(encoding="utf-8")
        match = re.search(r"/\* cffi:begin \*/(.*?)/\* cffi:end \*/", header, re.DOTALL)
        if match is None:
            raise RuntimeError(f"{name} lacks the cffi:begin/cffi:end markers")
        blocks.append(match.group(1))
    return "\n".join(blocks)


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
    "".join(f'#include "{name}"\n' for name in HEADERS),
    sources=[str((HERE / name).relative_to(ROOT)) for name in SOURCES],
    include_dirs=[str((HERE / "include").relative_to(ROOT))],
    libraries=["z", "pthread"],
    define_macros=[("DPDPU_VERSION_STR", f'"{_version()}"')],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)
