"""``dpdpu fidelity``: every published figure the emulator is calibrated on, reproduced (:mod:`dpdpu.fidelity`)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..runtime.profile import builtin_profiles
from .common import make_console

__all__ = ["fidelity"]


@click.command()
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
    from .. import fidelity as fid

    if plot and not plot.lower().endswith(".png"):
        raise click.BadParameter("charts are PNG files: give a name ending in .png", param_hint="--plot")
    selected = fid.checks(list(devices) or None)
    console = make_console()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=make_console(stderr=True), transient=True, disable=as_json,
    ) as bars:  # fmt: skip
        task = bars.add_task("reproducing published figures", total=len(selected))
        results = fid.run(selected, progress=lambda _: bars.advance(task))
    if plot:
        from ..charts import fidelity_chart

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
