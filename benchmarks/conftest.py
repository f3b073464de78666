"""Benchmark helpers: every group has one baseline; the summary prints ratios against it.

A ratio above 1 means dpdpu is faster than the baseline.  Ratios are what to
compare across machines; absolute times on a shared machine are noise.

Benchmarks of modeled time (the workload simulator) put their ratios in
``extra_info["modeled"]`` (name -> ratio), with optional goals:
``extra_info["modeled_goal"]`` (name -> least ratio, for this benchmark) and
``extra_info["modeled_goal_any"]`` (name -> least ratio, met if any benchmark
reporting that name reaches it).  The summary prints them in a section of
their own.
"""

from __future__ import annotations

from typing import Any

import pytest


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    benchmarks = [b for b in getattr(session, "benchmarks", []) if b]
    if not benchmarks:
        return
    groups: dict[str, list[Any]] = {}
    for bench in benchmarks:
        groups.setdefault(bench.group or "", []).append(bench)
    terminalreporter.section("ratios against the baseline of each group (median time; >1 means faster)")
    for group, items in sorted(groups.items()):
        baseline = next((b for b in items if b.extra_info.get("role") == "baseline"), None)
        if baseline is None:
            continue
        for bench in items:
            if bench is baseline:
                continue
            ratio = baseline.stats.median / bench.stats.median
            goal = bench.extra_info.get("goal")
            verdict = "" if goal is None else f"   goal >= {goal:.2f}x: {'met' if ratio >= goal else 'NOT met'}"
            terminalreporter.write_line(f"{group}: {bench.name} vs {baseline.name}: {ratio:.2f}x{verdict}")
    _modeled_summary(terminalreporter, benchmarks)


def _modeled_summary(terminalreporter: Any, benchmarks: list[Any]) -> None:
    modeled = [b for b in benchmarks if b.extra_info.get("modeled")]
    if not modeled:
        return
    terminalreporter.section("modeled ratios (device time in the cost model, not this machine's; >1 means faster)")
    best_any: dict[str, tuple[float, float, str]] = {}  # name -> (goal, best ratio, where)
    for bench in modeled:
        goals = bench.extra_info.get("modeled_goal") or {}
        for key, ratio in bench.extra_info["modeled"].items():
            goal = goals.get(key)
            verdict = "" if goal is None else f"   goal >= {goal:.2f}x: {'met' if ratio >= goal else 'NOT met'}"
            terminalreporter.write_line(f"{bench.group}: {bench.name}: {key} {ratio:.4f}x{verdict}")
        for key, goal in (bench.extra_info.get("modeled_goal_any") or {}).items():
            ratio = bench.extra_info["modeled"].get(key)
            if ratio is not None and (key not in best_any or ratio > best_any[key][1]):
                best_any[key] = (goal, ratio, bench.name)
    for key, (goal, ratio, where) in sorted(best_any.items()):
        verdict = "met" if ratio >= goal else "NOT met"
        terminalreporter.write_line(
            f"goal {key} >= {goal:.2f}x on at least one: {verdict} (best {ratio:.4f}x, {where})"
        )
