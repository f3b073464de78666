"""``dpdpu devices``: the device profiles, their engines and hardware capabilities."""

from __future__ import annotations

import json
import math
from typing import Any

import click
from rich.table import Table

from ..runtime.profile import Profile, builtin_profiles
from ..runtime.units import fmt_bytes
from .common import make_console

__all__ = ["devices"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--assumptions", is_flag=True, help="Also list every figure that is an assumption.")
def devices(as_json: bool, assumptions: bool) -> None:
    """List the device profiles, their engines and hardware capabilities."""
    profiles = [Profile.load(name) for name in builtin_profiles()]
    if as_json:
        click.echo(json.dumps([_profile_dict(p) for p in profiles], indent=2))
        return
    console = make_console()
    for p in profiles:
        table = Table(title=f"{p.name}: {p.description}", title_justify="left", expand=False)
        for col in ("engine", "kind", "lanes", "ops", "max job"):
            table.add_column(col)
        for e in p.engines:
            ops = ", ".join(sorted(e.ops - {"nop"}))
            max_job = fmt_bytes(int(e.max_job_bytes.value)) if e.max_job_bytes is not None else "-"
            table.add_row(e.name, e.kind, str(e.lanes.value), ops, max_job)
        console.print(table)
        link = f", PCIe {p.pcie['gb_per_s'].value} GB/s" if p.pcie else ""
        console.print(f"  memory {fmt_bytes(int(p.memory.value))}{link}\n")
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
