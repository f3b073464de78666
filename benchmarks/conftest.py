"""Benchmark helpers: every group has one baseline; the summary prints ratios against it.

A ratio above 1 means dpdpu is faster than the baseline.  Ratios are what to
compare across machines; absolute times on a shared machine are noise.
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
