"""Crash consistency of the file service with a real process killed by SIGKILL.

``crash_worker.py`` runs random file operations and flushes, logging each
expected state before its flush (*pending*) and after the flush completed
(*ack*), with fsync.  The test kills it at random moments, reopens the
service and checks that the namespace and every file's contents are exactly
the last acknowledged state, or the pending state after it (the kill fell
between a commit and its ack line): no acknowledged write lost, no file or
directory missing or extra, nothing half-visible.  The same data directory
carries on across kills, so recoveries of recoveries and checkpoints cut short
are covered too.

How many kills: ``DPDPU_CRASH_KILLS`` if set; else 50 with ``--run-slow`` (if
the option exists) or ``DPDPU_RUN_SLOW=1``; else 8.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dpdpu.storage import FileService

WORKER = Path(__file__).with_name("crash_worker.py")


def _kills(config: pytest.Config) -> int:
    if os.environ.get("DPDPU_CRASH_KILLS"):
        return int(os.environ["DPDPU_CRASH_KILLS"])
    slow = config.getoption("--run-slow", default=False) or os.environ.get("DPDPU_RUN_SLOW", "") not in ("", "0")
    return 50 if slow else 8


def _expected(ack_log: Path) -> list[dict[str, Any]]:
    """The states the service may legitimately be in: last acknowledged, then a pending one after it."""
    acked: dict[str, Any] | None = None
    pending: dict[str, Any] | None = None
    for line in ack_log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # a line cut short by the kill was never acknowledged
            continue
        if entry["kind"] == "base":
            acked, pending = entry, None
        elif entry["kind"] == "pending":
            pending = entry
        elif entry["kind"] == "ack":
            assert pending is not None and pending["step"] == entry["step"]
            acked, pending = pending, None
    states = [s for s in (acked, pending) if s is not None]
    return [{"files": s["files"], "dirs": s["dirs"]} for s in states]


def _actual(fs: FileService) -> dict[str, Any]:
    files: dict[str, list[Any]] = {}
    dirs: list[str] = []
    for where, subdirs, names in fs.walk():
        dirs.extend(f"{where}/{d}" if where else d for d in subdirs)
        for n in names:
            path = f"{where}/{n}" if where else n
            size = fs.stat(path).size
            content = fs.read(path, 0, size).result()
            assert len(content) == size
            files[path] = [size, hashlib.sha256(content).hexdigest()]
    return {"files": dict(sorted(files.items())), "dirs": sorted(dirs)}


def _describe(actual: dict[str, Any], expected: list[dict[str, Any]]) -> str:
    lines = []
    for i, state in enumerate(expected):
        missing = sorted(set(state["files"]) - set(actual["files"]))
        extra = sorted(set(actual["files"]) - set(state["files"]))
        differ = sorted(p for p in state["files"] if p in actual["files"] and actual["files"][p] != state["files"][p])
        lines.append(
            f"candidate {i}: missing {missing}, extra {extra}, different {differ}, "
            f"dirs {actual['dirs']} vs {state['dirs']}"
        )
    return "; ".join(lines)


@pytest.mark.slow
def test_kill_9_at_random_moments(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    kills = _kills(request.config)
    data_dir = tmp_path / "svc"
    ack_log = tmp_path / "acks.jsonl"
    rng = random.Random(int(os.environ.get("DPDPU_CRASH_SEED", "20240613")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), *sys.path])}
    failures: list[str] = []
    replays = torn = acked_steps = mid_flush = 0
    for kill in range(kills):
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(data_dir), str(ack_log), str(rng.randrange(1 << 30))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                proc.kill()
                _, err = proc.communicate(timeout=30)
                pytest.fail(f"worker did not start (kill {kill}): {line!r} {err[-3000:]}")
            time.sleep(rng.uniform(0.0, 0.35))
        finally:
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, f"worker ended by itself (kill {kill}): {err[-3000:]}"
        expected = _expected(ack_log)
        with FileService(data_dir, device=None) as fs:
            stats = fs.stats()
            replays += stats["replayed_records"]
            torn += stats["torn_tail_bytes"] > 0
            actual = _actual(fs)
            fs.close(flush=False)
        if actual not in expected:
            failures.append(f"kill {kill}: {_describe(actual, expected)}")
        elif len(expected) == 2 and actual == expected[1]:
            mid_flush += 1
        acked_steps += sum(1 for ln in ack_log.read_text().splitlines() if '"kind": "ack"' in ln)
        ack_log.write_text("")  # the next worker logs its starting state as the new base
    print(f"\ncrash test: {kills} kills, {len(failures)} failures, {acked_steps} acknowledged flushes, "
          f"{mid_flush} kills between a commit and its ack, {replays} journal records replayed, "
          f"{torn} torn tails cut")  # fmt: skip
    assert not failures, "\n".join(failures)
    assert acked_steps > 0
