"""``dpdpu demo``: the compression pipeline on emulated BlueField-2 and BlueField-3 (the job is :mod:`dpdpu.demo`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..runtime.units import fmt_bytes, fmt_seconds
from .common import make_console

__all__ = ["demo"]


@click.command()
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
    from ..demo import run_demo

    console = make_console(stderr=as_json)
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
            step.step, step.device, ran_on, fmt_seconds(step.wall_s), fmt_seconds(step.modeled_s),
            fmt_seconds(host.modeled_s), fmt_seconds(max(0.0, host.host_busy_s - step.host_busy_s)),
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
        f"  {fmt_bytes(report.size)} compressed to {fmt_bytes(compressed)} ({report.size / max(compressed, 1):.2f}x); "
        f"decompressed output verified (crc32c {report.crc32c:#010x})"
    )
