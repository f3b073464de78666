"""The ``dpdpu`` command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .errors import DpdpuError
from .runtime.placement import _ms, _size
from .runtime.profile import Profile, builtin_profiles


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
    # Pipes and CI logs get a wide fixed width instead of rich's 80 columns.
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 120
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
                        "mib_per_s": c.mib_per_s,
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
    "--chunk", "chunk_kib", type=click.IntRange(4, 1 << 20), default=1024, show_default=True, help="Job size in KiB."
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
