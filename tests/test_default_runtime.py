"""The default runtime: started on first use outside any ``with Runtime()``, said so once, shut down at exit."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

import dpdpu


def test_the_default_runtime_is_started_once_and_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DPDPU_DEVICE", "bluefield2")
    dpdpu.default_runtime().shutdown()  # whatever an earlier test left; the next use starts a new one
    with caplog.at_level(logging.INFO, logger="dpdpu.runtime.runtime"):
        blob = dpdpu.compute.compress(b"x" * 4096)
        assert dpdpu.compute.decompress(blob) == b"x" * 4096
    started = [r for r in caplog.records if "default runtime" in r.getMessage()]
    assert len(started) == 1 and started[0].levelno == logging.INFO and "bluefield2" in started[0].getMessage()
    rt = dpdpu.default_runtime()
    assert rt is dpdpu.current_runtime() and rt.device.label == "bluefield2" and not rt.closed
    with dpdpu.Runtime("host") as inner:
        assert dpdpu.current_runtime() is inner and dpdpu.default_runtime() is rt
    rt.shutdown()


def test_a_script_that_uses_the_default_runtime_exits() -> None:
    code = (
        "import logging, dpdpu; logging.basicConfig(level=logging.INFO, format='%(name)s %(message)s');"
        "print(len(dpdpu.compute.compress(b'x' * 100000)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, DPDPU_DEVICE="bluefield3"),
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 0
    assert done.stderr.count("started the default runtime on bluefield3") == 1
