"""The ``dpdpu`` command line."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .errors import DpdpuError
from .runtime.placement import POLICIES, _ms, _size
from .runtime.profile import Profile, builtin_profiles

if TYPE_CHECKING:
    from .runtime.simulator import Mix, SimReport


class DpdpuCliError(click.ClickException):
    """A user-facing failure: printed as one line, exit status 1."""

    exit_code = 1


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DpdpuError as exc:
            raise DpdpuCliError(str(exc)) from exc


def _console(stderr: bool = False) -> Console:
    # COLUMNS wins; otherwise pipes and CI logs get a wide fixed width instead of rich's 80 columns.
    stream = sys.stderr if stderr else sys.stdout
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) > 0 else (None if stream.isatty() else 120)
    return Console(highlight=False, width=width, stderr=stderr)


@click.group(cls=_Group, context_settings={"auto_envvar_prefix": "DPDPU", "help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dpdpu")
def main() -> None:
    """dpdpu: offload data processing to DPUs, or to the built-in DPU emulator.

    Devices are emulated from profiles (bluefield2, bluefield3, host) that
    carry each device's capabilities and cost figures with their sources.
    Set DPDPU_DEVICE to choose the device the Python API uses by default.
    """


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--assumptions", is_flag=True, help="Also list every figure that is an assumption.")
def devices(as_json: bool, assumptions: bool) -> None:
    """List the device profiles, their engines and hardware capabilities."""
    profiles = [Profile.load(name) for name in builtin_profiles()]
    if as_json:
        click.echo(json.dumps([_profile_dict(p) for p in profiles], indent=2))
        return
    console = _console()
    for p in profiles:
        table = Table(title=f"{p.name}: {p.description}", title_justify="left", expand=False)
        for col in ("engine", "kind", "lanes", "ops", "max job"):
            table.add_column(col)
        for e in p.engines:
            ops = ", ".join(sorted(e.ops - {"nop"}))
            max_job = _size(int(e.max_job_bytes.value)) if e.max_job_bytes is not None else "-"
            table.add_row(e.name, e.kind, str(e.lanes.value), ops, max_job)
        console.print(table)
        link = f", PCIe {p.pcie['gb_per_s'].value} GB/s" if p.pcie else ""
        console.print(f"  memory {_size(int(p.memory.value))}{link}\n")
    matrix = Table(title="hardware capabilities", title_justify="left")
    matrix.add_column("capability")
    dpus = [p for p in profiles if p.hardware]
    for p in dpus:
        matrix.add_column(p.name)
    matrix.add_column("source")
    for cap in sorted({c for p in dpus for c in p.hardware}):
        cells = ["yes" if p.hardware.get(cap) and p.hardware[cap].value else "no" for p in dpus]
        source = next((p.hardware[cap].source for p in dpus if cap in p.hardware), "")
        matrix.add_row(cap, *cells, source)
    console.print(matrix)
    if assumptions:
        for p in profiles:
            console.print(f"\n[bold]{p.name}[/bold] assumptions:")
            for line in p.assumptions():
                console.print(f"  - {line}")


def _profile_dict(p: Profile) -> dict[str, Any]:
    return {
        "name": p.name,
        "kind": p.kind,
        "description": p.description,
        "memory_bytes": int(p.memory.value),
        "pcie_gb_per_s": p.pcie["gb_per_s"].value if p.pcie else None,
        "hardware": {k: bool(v.value) for k, v in p.hardware.items()},
        "engines": [
            {
                "name": e.name,
                "kind": e.kind,
                "lanes": e.lanes.value,
                "ops": sorted(e.ops),
                "max_job_bytes": e.max_job_bytes.value if e.max_job_bytes is not None else None,
                "costs": {
                    op: {
                        "fixed_us": c.fixed_s * 1e6,
                        "mib_per_s": None if math.isinf(c.mib_per_s) else c.mib_per_s,
                        "out_mib_per_s": None if c.out_rate is None else float(c.out_rate.value),
                        "coalesce": c.coalesces,
                        "source": c.source,
                        "assumption": c.assumption,
                    }
                    for op, c in e.costs.items()
                },
            }
            for e in p.engines
        ],
        "assumptions": p.assumptions(),
    }


@main.command()
@click.option(
    "--size", "size_mib", type=click.IntRange(1, 4096), default=32, show_default=True, help="Data set size in MiB."
)
@click.option(
    "--chunk",
    "chunk_kib",
    type=click.IntRange(4, 1 << 20),
    default=16,
    show_default=True,
    help="Job size in KiB (the hardware engines take at most 16 KiB per job).",
)
@click.option("--level", type=click.IntRange(-1, 9), default=6, show_default=True, help="zlib compression level.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated data set.")
@click.option(
    "--workers", type=click.IntRange(1, 256), default=None, help="Worker threads per engine [default: CPU count]."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def demo(size_mib: int, chunk_kib: int, level: int, seed: int, workers: int | None, as_json: bool) -> None:
    """Run a compression pipeline on emulated BlueField-2 and BlueField-3.

    Compression lands on BlueField-2's hardware engine, falls back to the Arm
    cores on BlueField-3 (no deflate compression in its hardware), and
    decompression runs in BlueField-3 hardware; the same jobs on the host
    alone are the baseline.  Every job runs for real and is verified.
    """
    from .demo import run_demo

    console = _console(stderr=as_json)
    console.print(
        f"dpdpu demo: {size_mib} MiB of generated data in {chunk_kib} KiB jobs, deflate level {level}",
        style="bold",
    )
    with Progress(
        TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    ) as bars:  # fmt: skip

        @contextmanager
        def progress(description: str, total: int) -> Iterator[Callable[[], None]]:
            task = bars.add_task(description, total=total)
            yield lambda: bars.advance(task)

        report = run_demo(size_mib << 20, chunk_kib << 10, level=level, seed=seed, workers=workers, progress=progress)

    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    _print_report(console, report)


def _print_report(console: Console, report: Any) -> None:
    table = Table(title="where each step ran, and what it cost", title_justify="left")
    for col, justify in (
        ("step", "left"), ("device", "left"), ("ran on", "left"), ("wall", "right"),
        ("modeled", "right"), ("host-only", "right"), ("host CPU saved", "right"),
    ):  # fmt: skip
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for step in report.steps:
        if step.device == "host":
            continue
        host = report.step(step.step, "host")
        ran_on = ", ".join(f"{engine.split('/')[1]} x{n}" for engine, n in sorted(step.engines.items()))
        table.add_row(
            step.step, step.device, ran_on, _ms(step.wall_s), _ms(step.modeled_s), _ms(host.modeled_s),
            _ms(max(0.0, host.host_busy_s - step.host_busy_s)),
        )  # fmt: skip
    console.print(table)
    console.print(
        "  modeled: device time of the step on the emulated device; host-only: the same jobs on the\n"
        "  12-core host alone; host CPU saved: host core time the offload did not use.",
        style="dim",
    )
    for step in report.steps:
        if step.why:
            console.print(f"  {step.device} {step.step} fell back: {step.why}")
    compressed = report.step("compress", "bluefield3").bytes_out
    console.print(
        f"  {_size(report.size)} compressed to {_size(compressed)} ({report.size / max(compressed, 1):.2f}x); "
        f"decompressed output verified (crc32c {report.crc32c:#010x})"
    )


#: Placements above which ``simulate`` shows a progress bar (a couple of seconds of work).
_SIMULATE_PROGRESS_STEPS = 40_000


@main.command()
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
    from .runtime import simulator as sim

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
    console = _console(stderr=as_json)
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
    _console().print(table)


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
        row = [p, _ms(r.makespan_s)]
        if comparing:
            row += [_fmt_ratio(ratios[p]["vs_host_only"]), _fmt_ratio(ratios[p]["vs_best_other"])]
        row += [
            _ms(r.latency_mean_s), _ms(r.latency_p99_s), _size(r.pcie_bytes), _ms(r.host_busy_s),
            f"{r.host_cores_saved:.2f}",
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


@main.command()
@click.option(
    "--device", "devices", multiple=True, type=click.Choice(builtin_profiles()),
    help="Check this profile only (repeatable) [default: every built-in profile].",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Also draw published vs modeled to FILE.png.")
def fidelity(devices: tuple[str, ...], as_json: bool, plot: str | None) -> None:
    """Reproduce every published figure the emulator is calibrated on.

    Each figure is reproduced through the public API from modeled time and
    printed next to its published value.  Calibrated figures must stay within
    10% (exit status 1 otherwise); predictions, published figures kept out of
    the calibration, are expected within 25%.  See docs/FIDELITY.md.
    """
    from . import fidelity as fid

    if plot and not plot.lower().endswith(".png"):
        raise click.BadParameter("charts are PNG files: give a name ending in .png", param_hint="--plot")
    selected = fid.checks(list(devices) or None)
    console = _console()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=_console(stderr=True), transient=True, disable=as_json,
    ) as bars:  # fmt: skip
        task = bars.add_task("reproducing published figures", total=len(selected))
        results = fid.run(selected, progress=lambda _: bars.advance(task))
    if plot:
        from .charts import fidelity_chart

        fidelity_chart(results, plot)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        _print_fidelity(console, results)
        if plot:
            console.print(f"chart: {plot}")
    if any(r.status == "FAIL" for r in results):
        sys.exit(1)


def _print_fidelity(console: Console, results: list[Any]) -> None:
    for device in dict.fromkeys(r.check.device for r in results):
        table = Table(title=device, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for col, justify in (("figure [unit]", "left"), ("published", "right"), ("modeled", "right"),
                             ("error", "right"), ("check", "left")):  # fmt: skip
            table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        for r in results:
            if r.check.device != device:
                continue
            kind = "" if r.check.kind == "calibrated" else "pred "
            status = {"ok": "ok", "FAIL": "[red]FAIL[/red]", "miss": "[yellow]miss[/yellow]"}[r.status]
            table.add_row(
                escape(f"{r.check.figure} [{r.check.unit}]"), _figure(r.check.published), _figure(r.modeled),
                f"{r.error:+.1%}", kind + status,
            )  # fmt: skip
        console.print(table)
    calibrated = [r for r in results if r.check.kind == "calibrated"]
    predictions = [r for r in results if r.check.kind == "prediction"]
    worst = max((abs(r.error) for r in calibrated), default=0.0)
    console.print(
        f"{sum(r.ok for r in calibrated)} of {len(calibrated)} calibrated figures within 10% (worst {worst:.1%}); "
        f"{sum(r.ok for r in predictions)} of {len(predictions)} predictions within 25%."
    )
    for r in predictions:
        if not r.ok and r.check.known_miss:
            console.print(f"  {r.check.name} misses: {r.check.known_miss}.")


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def _add_engine_commands() -> None:
    """Commands that live next to the engine they drive (imported once ``main`` exists)."""
    from .agent.cli import register as add_agent_commands
    from .storage.kv_cli import kv_sim

    add_agent_commands(main)  # agent, deploy, offloads, undeploy, invoke, stats, health
    main.add_command(kv_sim)


_add_engine_commands()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
