"""``dpdpu simulate``: a workload mix replayed on a device profile in modeled time."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import DpdpuError
from ..runtime.placement import POLICIES
from ..runtime.profile import Profile
from ..runtime.units import fmt_bytes, fmt_seconds
from .common import make_console

if TYPE_CHECKING:
    from ..runtime.simulator import Mix, SimReport

__all__ = ["simulate"]


#: Placements above which ``simulate`` shows a progress bar (a couple of seconds of work).
_SIMULATE_PROGRESS_STEPS = 40_000


@click.command()
@click.argument("mix", required=False)
@click.option("--device", default="bluefield3", show_default=True, help="DPU profile: a built-in name or a TOML path.")
@click.option(
    "--policy",
    type=click.Choice([*POLICIES, "all"]),
    default="all",
    show_default=True,
    help="Placement policy; 'all' compares every policy on the same tasks.",
)
@click.option("--seed", type=int, default=None, help="Seed of arrivals and sizes [default: the mix's].")
@click.option("--list", "list_mixes", is_flag=True, help="List the shipped mixes and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def simulate(mix: str | None, device: str, policy: str, seed: int | None, list_mixes: bool, as_json: bool) -> None:
    """Replay a workload mix on a device profile in modeled time (nothing runs).

    MIX is a shipped mix (see --list) or a TOML file.  Every task is placed
    by the runtime's placement policy and charged on the modeled engines;
    the report gives the modeled makespan, engine utilization, PCIe bytes,
    task latency and the host cores saved against running on the host only.
    """
    from ..runtime import simulator as sim

    if list_mixes:
        _list_mixes(sim, as_json)
        return
    if mix is None:
        raise click.UsageError("give a MIX (a shipped mix name or a TOML path), or --list")
    try:
        workload = sim.load_mix(mix)
    except DpdpuError as exc:
        raise click.BadParameter(str(exc), param_hint="MIX") from exc
    try:
        profile = Profile.load(device)
    except DpdpuError as exc:
        raise click.BadParameter(str(exc), param_hint="'--device'") from exc
    if profile.kind != "dpu":
        raise click.BadParameter(
            f"{profile.name} is a {profile.kind} profile; give a DPU profile", param_hint="'--device'"
        )
    runs = len(POLICIES) if policy == "all" else 1 if policy == "host-only" else 2
    total = sim.steps_of(workload, seed) * runs
    console = make_console(stderr=as_json)
    with _maybe_progress(console, f"simulating {workload.name}", total) as advance:
        if policy == "all":
            reports = sim.compare(workload, profile, seed, progress=advance)
        else:
            reports = {policy: sim.simulate(workload, profile, policy, seed, progress=advance)}
    if as_json:
        if policy == "all":
            click.echo(json.dumps(_comparison_dict(workload, reports), indent=2))
        else:
            click.echo(json.dumps(reports[policy].as_dict(), indent=2))
        return
    _print_simulation(console, workload, reports)


@contextmanager
def _maybe_progress(console: Console, description: str, total: int) -> Iterator[Callable[[int], None] | None]:
    if total < _SIMULATE_PROGRESS_STEPS:
        yield None
        return
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as bars:  # fmt: skip
        task = bars.add_task(description, total=total)
        yield lambda n: bars.advance(task, n)


def _list_mixes(sim: Any, as_json: bool) -> None:
    mixes = [sim.load_mix(name) for name in sim.builtin_mixes()]
    if as_json:
        click.echo(json.dumps([m.as_dict() for m in mixes], indent=2))
        return
    table = Table(title="shipped workload mixes", title_justify="left")
    for col in ("mix", "description", "task classes", "length"):
        table.add_column(col)
    for m in mixes:
        classes = "\n".join(
            f"{c.name}: {c.describe()}, {c.size.describe()}, {c.arrival.describe()}, data on {c.data}"
            for c in m.classes
        )
        table.add_row(m.name, m.description, classes, m.describe())
    make_console().print(table)


def _ratio(baseline: float, value: float) -> float | None:
    return baseline / value if value > 0 else None


def _comparison_dict(mix: Mix, reports: dict[str, SimReport]) -> dict[str, Any]:
    ratios = {}
    for p, r in reports.items():
        others = [o.makespan_s for q, o in reports.items() if q != p]
        ratios[p] = {
            "vs_host_only": _ratio(reports["host-only"].makespan_s, r.makespan_s),
            "vs_best_other": _ratio(min(others), r.makespan_s) if others else None,
        }
    first = next(iter(reports.values()))
    return {
        "mix": mix.name,
        "device": first.device,
        "seed": first.seed,
        "tasks": first.tasks,
        "policies": {p: r.as_dict() for p, r in reports.items()},
        "makespan_ratios": ratios,
    }


def _print_simulation(console: Console, mix: Mix, reports: dict[str, SimReport]) -> None:
    first = next(iter(reports.values()))
    title = f"{mix.name} on {first.device}: {first.tasks} tasks, {first.steps} steps (seed {first.seed})"
    table = Table(title=title, title_justify="left")
    columns = ["policy", "makespan"]
    comparing = "host-only" in reports and len(reports) > 1
    if comparing:
        columns += ["vs host", "vs best"]
    columns += ["mean lat.", "p99 lat.", "PCIe", "host busy", "cores saved"]
    for col in columns:
        table.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True)
    ratios = _comparison_dict(mix, reports)["makespan_ratios"] if comparing else {}
    for p, r in reports.items():
        row = [p, fmt_seconds(r.makespan_s)]
        if comparing:
            row += [_fmt_ratio(ratios[p]["vs_host_only"]), _fmt_ratio(ratios[p]["vs_best_other"])]
        row += [
            fmt_seconds(r.latency_mean_s), fmt_seconds(r.latency_p99_s), fmt_bytes(r.pcie_bytes),
            fmt_seconds(r.host_busy_s), f"{r.host_cores_saved:.2f}",
        ]  # fmt: skip
        table.add_row(*row)
    console.print(table)
    engines = Table(title="engine utilization (steps placed)", title_justify="left")
    engines.add_column("engine")
    engines.add_column("lanes", justify="right")
    for p in reports:
        engines.add_column(p, justify="right", no_wrap=True)
    for label, usage in first.engines.items():
        cells = [f"{r.engines[label].utilization:.1%} ({r.engines[label].tasks})" for r in reports.values()]
        engines.add_row(label, str(usage.lanes), *cells)
    console.print(engines)
    console.print(
        "  modeled device time only.  vs host / vs best: the makespan of host-only / of the best other policy\n"
        "  over this one (>1: faster); lat.: task latency, arrival to the end of its last step; utilization:\n"
        "  busy time over lanes x makespan (the DMA engine's busy time is PCIe transfers); cores saved: host\n"
        "  busy time of the host-only run minus this one, over this makespan.",
        style="dim",
    )


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"
