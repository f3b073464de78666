"""The C core's stress programs (``csrc/tests/stress_*.c``), built plainly and run once each.

They drive the public C API from several threads at once: submitters racing a
device close, workers waiting for tasks of their own engine, block I/O racing
a bdev close, engine tasks doing block I/O (both plug-ins of the queue
engine at once), both ends of a ring, the cache table at its capacity, and the
timeout convention of every blocking call.  ``csrc/tests/run-sanitizers``
runs the same programs under AddressSanitizer, UndefinedBehaviorSanitizer and
ThreadSanitizer (``.ci/run`` does, after this suite).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
PROGRAMS = sorted(p.stem for p in (CSRC / "tests").glob("stress_*.c"))
FLAGS = ["-O1", "-g", "-std=gnu11", "-pthread", f"-I{CSRC / 'include'}", f"-I{CSRC}", '-DDPDPU_VERSION_STR="stress"']


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[Path]]:
    """The compiler and the core's objects, compiled once for every program."""
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None:
        pytest.skip("no C compiler to build the stress programs with")
    out = tmp_path_factory.mktemp("core")
    sources = sorted(CSRC.glob("*.c"))
    objects = [out / f"{src.stem}.o" for src in sources]

    def compile_one(src: Path, obj: Path) -> None:
        subprocess.run([cc, *FLAGS, "-c", str(src), "-o", str(obj)], check=True, capture_output=True)

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(compile_one, sources, objects))
    return cc, objects


@pytest.mark.parametrize("program", PROGRAMS)
def test_stress_program(program: str, build: tuple[str, list[Path]], tmp_path: Path) -> None:
    cc, objects = build
    exe = tmp_path / program
    source = CSRC / "tests" / f"{program}.c"
    subprocess.run(
        [cc, *FLAGS, str(source), *map(str, objects), "-lz", "-o", str(exe)], check=True, capture_output=True
    )
    proc = subprocess.run(
        [str(exe)], capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)}
    )
    assert proc.returncode == 0, f"{program} exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    assert proc.stdout.count(" ok ") >= 1
