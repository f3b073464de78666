"""The KV tier's commands: ``dpdpu kv-sim`` replays a serving trace against its model, ``dpdpu kv-serve`` serves it."""

from __future__ import annotations

import json
import math
import signal
import threading
from pathlib import Path
from types import FrameType

import click
from rich.table import Table

from ..kv.policies import POLICIES
from ..kv.pool import DEFAULT_MAX_STORES, KvStorePool
from ..kv.remote import KvFlightService
from ..kv.sim import MODELS, TraceError, generate_trace, load_trace, simulate
from ..network.flight import FlightEndpoint
from ..runtime.profile import builtin_profiles
from .common import make_console

__all__ = ["kv_serve", "kv_sim"]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB"


@click.command("kv-sim")
@click.argument("trace", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--device", default="bluefield3", show_default=True, help="Device profile: " + ", ".join(builtin_profiles())
)
@click.option(
    "--model",
    default="llama-7b",
    show_default=True,
    help=f"{', '.join(MODELS)} or NAME:LAYERS:KV_HEADS:HEAD_DIM[:DTYPE]",
)
@click.option(
    "--prefill-tokens-per-s", type=float, default=8000.0, show_default=True, help="Prefill throughput of the GPU."
)
@click.option("--chunk-tokens", type=int, default=256, show_default=True, help="Tokens per KV chunk.")
@click.option(
    "--dram-gb", type=click.FloatRange(min=0), default=None, help="DRAM tier size (default: the profile's memory)."
)
@click.option("--disk-gb", type=click.FloatRange(min=0), default=256.0, show_default=True, help="Storage tier size.")
@click.option("--policy", type=click.Choice(POLICIES), default="lru", show_default=True, help="Eviction policy.")
@click.option("--generate", "generate", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a generated trace to this path (and replay it unless TRACE is given).")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --generate.")
@click.option("--conversations", type=int, default=40, show_default=True, help="Conversations of --generate.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def kv_sim(
    trace: Path | None,
    device: str,
    model: str,
    prefill_tokens_per_s: float,
    chunk_tokens: int,
    dram_gb: float | None,
    disk_gb: float,
    policy: str,
    generate: Path | None,
    seed: int,
    conversations: int,
    as_json: bool,
) -> None:
    """Replay a request TRACE (JSON or CSV; default: the shipped chat trace) against the KV tier.

    Reports the prefix hit rate, the bytes moved and the modeled time to first
    token with the KV tier against recomputing the prefill, so you see when
    offload pays (slow prefill, fast tiers) and when it makes TTFT worse (a
    fast prefill, a slow eMMC tier).
    """
    if chunk_tokens <= 0:
        raise click.BadParameter("must be positive", param_hint="--chunk-tokens")
    # FloatRange lets nan and inf through (they compare false with its bounds).
    for hint, value in (("--dram-gb", dram_gb), ("--disk-gb", disk_gb)):
        if value is not None and not math.isfinite(value):
            raise click.BadParameter("must be a finite number", param_hint=hint)
    if generate is not None:
        data = generate_trace(seed, conversations=conversations)
        generate.write_text(json.dumps(data, separators=(",", ":")) + "\n")
        if not as_json:
            click.echo(f"wrote {len(data['requests'])} requests to {generate}")
        if trace is None:
            trace = generate
    try:
        requests = load_trace(trace)
    except TraceError as exc:
        # A malformed file is a usage error: the message names what is wrong, no traceback.
        raise click.BadParameter(str(exc), param_hint="TRACE") from exc
    report = simulate(
        requests,
        device=device,
        model=model,
        prefill_tokens_per_s=prefill_tokens_per_s,
        chunk_tokens=chunk_tokens,
        dram_bytes=None if dram_gb is None else int(dram_gb * 2**30),
        disk_bytes=int(disk_gb * 2**30),
        policy=policy,
    )
    if as_json:
        click.echo(json.dumps({**report.as_dict(), "verdict": report.verdict}, indent=2))
        return
    console = make_console()
    s = report.settings
    console.print(
        f"[bold]{report.model}[/] on [bold]{report.device}[/]: {report.requests} requests, "
        f"{report.prompt_tokens} prompt tokens, prefill {s['prefill_tokens_per_s']:.0f} tokens/s, "
        f"{s['chunk_tokens']}-token chunks of {s['chunk_bytes'] / 2**20:.1f} MiB, "
        f"DRAM {s['dram_bytes'] / 2**30:.1f} GiB, storage {s['storage'] or 'none'}, {s['policy']}"
    )
    console.print(
        f"hit rate {report.hit_rate:.1%} ({report.dram_hit_tokens} tokens from DRAM, {report.disk_hit_tokens} from "
        f"storage); PCIe {_gb(report.pcie_bytes)}, storage read {_gb(report.disk_read_bytes)}, written "
        f"{_gb(report.disk_write_bytes)} (write utilization {report.storage_write_utilization:.0%})"
    )
    table = Table(title="modeled time to first token", title_justify="left")
    for col in ("", "mean", "p50", "p99", "vs recompute"):
        table.add_column(col, justify="right" if col else "left")
    for name, summary, speed in (
        ("recompute the prefill", report.ttft_recompute, 1.0),
        ("load from the KV tier", report.ttft_tier, report.speedup_tier),
        ("the faster per request", report.ttft_adaptive, report.speedup_adaptive),
    ):
        table.add_row(name, _ms(summary["mean"]), _ms(summary["p50"]), _ms(summary["p99"]), f"{speed:.2f}x")
    console.print(table)
    console.print(report.verdict)


@click.command("kv-serve")
@click.option("--listen", default="127.0.0.1:8815", show_default=True, help="HOST:PORT (port 0: any free port).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Storage tier directory (a subdirectory per store; default: DRAM only).")  # fmt: skip
@click.option("--dram-gb", type=click.FloatRange(min=0), default=None,
              help="DRAM per model, split over its ranks (default: the device profile's memory).")  # fmt: skip
@click.option("--disk-gb", type=click.FloatRange(min=0), default=64.0, show_default=True,
              help="Storage per model, split over its ranks.")  # fmt: skip
@click.option("--max-stores", type=click.IntRange(1), default=DEFAULT_MAX_STORES, show_default=True,
              help="Stores (model shards) the tier opens at most.")  # fmt: skip
@click.option("--token", default=None, help="Bearer token every call must carry (required off loopback).")
def kv_serve(
    listen: str, data_dir: Path | None, dram_gb: float | None, disk_gb: float, max_stores: int, token: str | None
) -> None:
    """Serve the KV-cache tier over Arrow Flight until SIGTERM or Ctrl-C.

    Clients (vLLM's DpdpuKVConnector, RemoteKvStore) open a store per model
    shard with their own chunk size, device profile and policies.  The first
    line printed is JSON with the address to give them ("location").
    """
    for hint, value in (("--dram-gb", dram_gb), ("--disk-gb", disk_gb)):
        if value is not None and not math.isfinite(value):
            raise click.BadParameter("must be a finite number", param_hint=hint)
    pool = KvStorePool(
        data_dir=data_dir,
        dram_bytes=None if dram_gb is None else int(dram_gb * 2**30),
        disk_bytes=int(disk_gb * 2**30),
        max_stores=max_stores,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    with pool, FlightEndpoint(f"grpc://{listen}", token=token, services={"kv": KvFlightService(pool)}) as endpoint:
        endpoint.serve_background()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        click.echo(json.dumps({"location": endpoint.location, "port": endpoint.port}))
        while not stop.wait(0.5):
            pass
