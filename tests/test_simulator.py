"""The workload simulator: hand-computed schedules, determinism, every shipped mix, the optimum, the CLI."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dpdpu import errors
from dpdpu.cli import main
from dpdpu.runtime import simulator as sim
from dpdpu.runtime.device import Task
from dpdpu.runtime.model import DeviceModel
from dpdpu.runtime.placement import POLICIES
from dpdpu.runtime.profile import Profile

US = 1e-6
MIB = 1 << 20
#: bluefield3/bluefield2 PCIe: 20 GB/s plus 3 us per transfer (profile [pcie])
PCIE_FIXED_S, PCIE_BYTES_PER_S = 3 * US, 20e9
#: Shipped mixes are shortened to this fraction of their length in these tests (the benchmarks run them whole).
SCALE = 0.25


def _transfer(nbytes: int) -> float:
    return PCIE_FIXED_S + nbytes / PCIE_BYTES_PER_S


def _mix(classes: list[dict[str, Any]], **top: Any) -> sim.Mix:
    return sim.Mix.from_dict({"name": "test", "classes": classes, **top})


def _scaled(name: str) -> sim.Mix:
    mix = sim.load_mix(name)
    return mix if mix.duration_s is None else replace(mix, duration_s=mix.duration_s * SCALE)


_COMPARISONS: dict[tuple[str, str], dict[str, sim.SimReport]] = {}


def _compare(name: str, device: str) -> dict[str, sim.SimReport]:
    key = (name, device)
    if key not in _COMPARISONS:
        _COMPARISONS[key] = sim.compare(_scaled(name), device)
    return _COMPARISONS[key]


# --- a schedule computed by hand ---------------------------------------------------------------


def test_hand_computed_tiny_mix() -> None:
    # Two 1 MiB deflate compressions of host data at t=0 and a 1 MiB filter of
    # DPU-resident data at 1 ms, on bluefield2 under the cost policy.
    mix = _mix(
        [
            {"name": "zip", "op": "deflate_compress", "ratio": 0.5, "level": 6, "size": MIB,
             "arrival": {"process": "burst", "count": 2}},
            {"name": "scan", "op": "filter", "ratio": 0.1, "size": "1 MiB", "data": "device",
             "arrival": {"process": "burst", "count": 1, "at_s": 1e-3}},
        ]
    )  # fmt: skip
    report = sim.simulate(mix, "bluefield2", "cost")

    # Figures of the profiles: bluefield2 accelerator deflate_compress 165.5 MiB/s + 0.21 us
    # per job of at most 16 KiB (1 MiB runs as 64 jobs); host deflate_compress 33.4 MiB/s +
    # 0.2 us (level 6); host filter 3761 MiB/s + 0.2 us; bluefield2 Arm filter 638 MiB/s + 0.7 us.
    accel = 64 * 0.21 * US + MIB / (165.5 * MIB)
    host_zip = 0.2 * US + MIB / (33.4 * MIB)
    t_in, t_out = _transfer(MIB), _transfer(MIB // 2)
    # zip #0 on the accelerator: its data crosses first, its result crosses back.
    zip0 = t_in + accel + t_out
    assert zip0 < host_zip  # 6.2 ms against 29.9 ms on a host core
    # zip #1 waits for the accelerator (one lane), and still beats a host core.
    zip1 = (t_in + accel) + accel + t_out
    assert zip1 < host_zip  # 12.3 ms
    # The scan: a host core pulls the 1 MiB (the DMA engine is long idle) and filters it,
    # against the Arm cores filtering it in place and sending 10% back.
    scan_host = 1e-3 + t_in + 0.2 * US + MIB / (3761 * MIB)
    scan_arm = 1e-3 + 0.7 * US + MIB / (638 * MIB) + _transfer(round(0.1 * MIB))
    assert scan_host < scan_arm

    placed = dict(report.assignment)
    assert placed == {
        "zip#0/deflate_compress": "bluefield2/accelerator",
        "zip#1/deflate_compress": "bluefield2/accelerator",
        "scan#0/filter": "host/cpu",
    }
    assert report.makespan_s == pytest.approx(zip1, rel=1e-9)
    latencies = [zip0, zip1, scan_host - 1e-3]
    assert report.latency_mean_s == pytest.approx(sum(latencies) / 3, rel=1e-9)
    assert report.latency_p99_s == pytest.approx(zip1, rel=1e-9)
    assert report.pcie_bytes == 2 * (MIB + MIB // 2) + MIB
    host_busy = 0.2 * US + MIB / (3761 * MIB)
    assert report.host_busy_s == pytest.approx(host_busy, rel=1e-9)
    # host-only also runs both compressions on host cores.
    assert report.host_cores_saved == pytest.approx(2 * host_zip / zip1, rel=1e-9)
    assert report.engines["bluefield2/accelerator"].tasks == 2
    assert report.engines["bluefield2/accelerator"].utilization == pytest.approx(2 * accel / zip1, rel=1e-9)
    # The link is busy only while bytes move (the fixed part is latency); results go back
    # on the outbound lane, so the DMA engine's own lane carries the three inbound copies.
    link_in = MIB / (20e9)
    assert report.engines["bluefield2/dma"].busy_s == pytest.approx(3 * link_in, rel=1e-9)

    host_only = sim.simulate(mix, "bluefield2", "host-only")
    assert host_only.makespan_s == pytest.approx(host_zip, rel=1e-9)
    assert host_only.host_cores_saved == 0.0
    assert set(dict(host_only.assignment).values()) == {"host/cpu"}


def test_pipeline_steps_follow_their_data() -> None:
    # A decompression in bluefield3 hardware leaves its output on the DPU; the next step
    # arrives when it finishes, and a host engine would have to pull that output.  The
    # page inflates to 16 KiB, the hardware's largest job.
    mix = _mix(
        [{"name": "p", "data": "device", "size": "4 KiB", "arrival": {"process": "burst", "count": 1},
          "pipeline": [{"op": "deflate_decompress", "ratio": 4.0}, {"op": "filter", "ratio": 0.25}]}]
    )  # fmt: skip
    report = sim.simulate(mix, "bluefield3", "dpu-only")
    steps = dict(report.assignment)
    assert steps["p#0/deflate_decompress"] == "bluefield3/accelerator"
    assert steps["p#0/filter"] == "bluefield3/arm"
    # Only the final result crosses: 16 KiB filtered to a quarter.
    assert report.pcie_bytes == 4 * 1024
    host_only = sim.simulate(mix, "bluefield3", "host-only")
    assert host_only.pcie_bytes == 4 * 1024  # the compressed input, pulled once


# --- determinism and sanity ------------------------------------------------------------------


def test_runs_are_deterministic_for_a_seed() -> None:
    mix = _scaled("log-ingest")
    a = sim.simulate(mix, "bluefield3", "cost", seed=5)
    b = sim.simulate(mix, "bluefield3", "cost", seed=5)
    assert a.as_dict() == b.as_dict() and a.assignment == b.assignment
    c = sim.simulate(mix, "bluefield3", "cost", seed=6)
    assert c.as_dict() != a.as_dict()
    assert sim.simulate(mix, "bluefield3", "cost").seed == mix.seed


@pytest.mark.parametrize("device", ["bluefield2", "bluefield3"])
@pytest.mark.parametrize("name", sim.builtin_mixes())
def test_every_policy_on_every_shipped_mix_is_sane(name: str, device: str) -> None:
    reports = _compare(name, device)
    assert list(reports) == list(POLICIES)
    tasks = {r.tasks for r in reports.values()}
    assert len(tasks) == 1 and tasks.pop() > 0
    for policy, r in reports.items():
        assert r.policy == policy and r.device == device
        assert r.makespan_s > 0
        assert 0 < r.latency_mean_s <= r.latency_p99_s <= r.makespan_s
        assert r.steps == sum(e.tasks for e in r.engines.values())
        for usage in r.engines.values():
            assert 0.0 <= usage.utilization <= 1.0, (policy, usage)
        assert r.host_busy_s >= 0 and r.pcie_bytes >= 0
        host = r.engines["host/cpu"]
        assert r.host_busy_s == pytest.approx(host.busy_s)
    assert reports["host-only"].host_cores_saved == 0.0
    assert all(e.tasks == 0 for k, e in reports["host-only"].engines.items() if not k.startswith("host/"))
    for policy in ("dpu-only", "greedy-accelerator"):
        assert reports[policy].host_cores_saved > 0


#: How much later than another policy's the cost policy's makespan may end.  Under
#: Poisson arrivals the makespan is the last arrival plus the latency of the last
#: task or two, so policies tie to within the luck of those tasks.
MAKESPAN_TOLERANCE = 0.002


@pytest.mark.parametrize("device", ["bluefield2", "bluefield3"])
@pytest.mark.parametrize("name", sim.builtin_mixes())
def test_cost_makespan_is_no_worse_than_other_policies(name: str, device: str) -> None:
    reports = _compare(name, device)
    cost = reports["cost"].makespan_s
    for policy, r in reports.items():
        assert cost <= r.makespan_s * (1 + MAKESPAN_TOLERANCE), (
            f"{name} on {device}: cost {cost * 1e3:.3f} ms, {policy} {r.makespan_s * 1e3:.3f} ms"
        )


# --- the optimum -------------------------------------------------------------------------------


def _random_mix(rng: random.Random) -> sim.Mix:
    ops = ["deflate_decompress", "deflate_compress", "lz4_decompress", "filter", "aggregate", "crc32c"]
    classes: list[dict[str, Any]] = []
    steps, most = 0, rng.randint(3, 6)
    while steps < most:
        cls: dict[str, Any] = {"name": f"c{len(classes)}"}
        if rng.random() < 0.3:
            cls["pipeline"] = [{"op": "deflate_decompress", "ratio": 4.0}, {"op": "filter", "ratio": 0.2}]
            steps += 2
        else:
            cls["op"] = rng.choice(ops)
            steps += 1
        cls["size"] = rng.choice([4096, 64 << 10, 1 << 20, 4 << 20])
        cls["data"] = rng.choice(["host", "device"])
        cls["arrival"] = {"process": "burst", "count": 1, "at_s": rng.choice([0.0, 0.0, 1e-4, 1e-3])}
        classes.append(cls)
    return _mix(classes)


def test_brute_force_matches_or_beats_cost_on_small_instances(record_property: Any) -> None:
    rng = random.Random(2024)
    margins = []
    for _ in range(12):
        mix = _random_mix(rng)
        for device in ("bluefield2", "bluefield3"):
            best = sim.brute_force_optimum(mix, device)
            cost = sim.simulate(mix, device, "cost")
            # The cost policy's schedule is one of those enumerated.
            assert best.makespan_s <= cost.makespan_s * (1 + 1e-12)
            assert best.evaluated >= 1 and len(best.assignment) == cost.steps
            margins.append(cost.makespan_s / best.makespan_s)
    worst = max(margins)
    record_property("worst cost/optimum", worst)
    print(f"cost/optimum on {len(margins)} small instances: worst {worst:.3f}, mean {sum(margins) / len(margins):.3f}")
    assert sum(m == pytest.approx(1.0) for m in margins) >= len(margins) // 2
    assert worst < 1.5


def test_brute_force_refuses_large_instances() -> None:
    with pytest.raises(errors.InvalidArgumentError, match="max_steps"):
        sim.brute_force_optimum("backup", "bluefield3")


# --- the mix format and bad input ------------------------------------------------------------------


def test_sizes_and_distributions() -> None:
    mix = _mix(
        [
            {"name": "u", "op": "filter", "size": {"dist": "uniform", "min": "4 KiB", "max": "16KiB"},
             "arrival": {"process": "poisson", "rate_per_s": 1e5}},
            {"name": "l", "op": "filter", "arrival": {"process": "poisson", "rate_per_s": 1e5},
             "size": {"dist": "lognormal", "median": "64 KiB", "sigma": 1.0, "min": "8 KiB", "max": "1 MiB"}},
        ],
        tasks=400,
    )  # fmt: skip
    jobs = mix.generate()
    assert len(jobs) == 400
    assert [j.arrival_s for j in jobs] == sorted(j.arrival_s for j in jobs)
    by_class = {c: [j.nbytes for j in jobs if j.cls.name == c] for c in ("u", "l")}
    assert all(4096 <= n <= 16384 for n in by_class["u"])
    assert all(8192 <= n <= MIB for n in by_class["l"])
    assert len(set(by_class["l"])) > 50
    median = sorted(by_class["l"])[len(by_class["l"]) // 2]
    assert 32 << 10 < median < 128 << 10
    assert mix.classes[0].steps[0].ratio == 0.5  # the model's assumed filter selectivity


def test_builtin_mixes_load() -> None:
    names = sim.builtin_mixes()
    assert {"log-ingest", "storage-server", "backup"} <= set(names)
    for name in names:
        mix = sim.load_mix(name)
        assert mix.name == name and mix.description and mix.classes


@pytest.mark.parametrize(
    ("change", "error", "field"),
    [
        ({"size": -5}, sim.MixError, "classes[0].size"),
        ({"size": "-4 KiB"}, sim.MixError, "classes[0].size"),
        ({"size": "12 parsecs"}, sim.MixError, "classes[0].size"),
        ({"size": {"dist": "uniform", "min": "8 KiB", "max": "4 KiB"}}, sim.MixError, "classes[0].size"),
        ({"size": {"dist": "zipf"}}, sim.MixError, "classes[0].size.dist"),
        ({"op": "filtr"}, errors.UnknownOpError, "classes[0].op"),
        ({"ratio": -1}, sim.MixError, "classes[0].ratio"),
        ({"data": "cloud"}, sim.MixError, "classes[0].data"),
        ({"level": 42}, sim.MixError, "classes[0].level"),
        ({"arrival": {"process": "poisson"}}, sim.MixError, "classes[0].arrival.rate_per_s"),
        ({"arrival": {"process": "burst", "count": 0}}, sim.MixError, "classes[0].arrival.count"),
        ({"arrival": {"process": "burst", "count": 2, "every_s": 1}}, sim.MixError, "every_s"),
        ({"colour": "blue"}, sim.MixError, "colour"),
    ],
)
def test_bad_mixes_name_the_field(change: dict[str, Any], error: type[Exception], field: str) -> None:
    cls = {"name": "c", "op": "filter", "size": 4096, "arrival": {"process": "burst", "count": 2}, **change}
    with pytest.raises(error) as info:
        _mix([cls])
    assert field in str(info.value)
    assert isinstance(info.value, errors.DpdpuError)


def test_bad_mix_files_and_arguments(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidArgumentError, match=r"no mix named 'nope'.*log-ingest"):
        sim.load_mix("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\n[[classes]\n")
    with pytest.raises(sim.MixError, match="not valid TOML") as info:
        sim.load_mix(bad)
    assert isinstance(info.value, errors.ProfileError) and isinstance(info.value, errors.InvalidArgumentError)
    with pytest.raises(sim.MixError, match="cannot read mix"):
        sim.load_mix(tmp_path / "missing.toml")
    poisson = tmp_path / "p.toml"
    poisson.write_text(
        'name = "p"\n[[classes]]\nop = "filter"\nsize = 4096\narrival = { process = "poisson", rate_per_s = 10 }\n'
    )
    with pytest.raises(sim.MixError, match="duration_s or tasks"):
        sim.load_mix(poisson)
    with pytest.raises(errors.UnknownDeviceError):
        sim.simulate("backup", "bluefield9")
    with pytest.raises(errors.InvalidArgumentError, match="DPU profile"):
        sim.simulate("backup", "host")
    with pytest.raises(errors.InvalidArgumentError, match="policy 'fastest'"):
        sim.simulate("backup", "bluefield3", "fastest")
    twice = [{"name": "a", "op": "filter", "size": 1, "arrival": {"process": "burst", "count": 1}}] * 2
    with pytest.raises(sim.MixError, match=r"classes\[1\].name"):
        _mix(twice)


def test_a_mix_from_a_file_runs(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        'name = "mine"\nseed = 1\ntasks = 20\n'
        '[[classes]]\nop = "zstd_compress"\nsize = "256 KiB"\narrival = { process = "poisson", rate_per_s = 1e4 }\n'
    )
    report = sim.simulate(path, "bluefield3", "cost")
    assert report.mix == "mine" and report.tasks == 20


def test_simulated_devices_run_nothing() -> None:
    dpu = sim.SimulatedDevice(DeviceModel(Profile.load("bluefield3")), "device")
    task = Task(op="filter", nbytes=4096)
    arm = dpu.engine("arm")
    assert dpu.can_run(task, arm) is None and dpu.estimate(task, arm, 0.0).finish_s > 0
    with pytest.raises(errors.UnsupportedOpError, match="models time only"):
        dpu.submit(task, arm, 0.0)
    with pytest.raises(errors.UnsupportedOpError):
        dpu.alloc(4096)


def test_report_table_and_dict() -> None:
    report = sim.simulate(_scaled("backup"), "bluefield3", "cost")
    text = str(report)
    assert "backup on bluefield3, policy cost" in text and "bluefield3/arm" in text and "host cores saved" in text
    data = json.loads(json.dumps(report.as_dict()))
    assert "assignment" not in data and data["engines"]["host/cpu"]["lanes"] == 12
    assert math.isclose(data["makespan_s"], report.makespan_s)


# --- the command line ---------------------------------------------------------------------------


def test_cli_list() -> None:
    result = CliRunner().invoke(main, ["simulate", "--list"])
    assert result.exit_code == 0, result.output
    for name in sim.builtin_mixes():
        assert name in result.output
    data = json.loads(CliRunner().invoke(main, ["simulate", "--list", "--json"]).stdout)
    assert {m["name"] for m in data} == set(sim.builtin_mixes())


def test_cli_compare_json() -> None:
    result = CliRunner().invoke(main, ["simulate", "backup", "--device", "bluefield2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mix"] == "backup" and data["device"] == "bluefield2"
    assert set(data["policies"]) == set(POLICIES)
    assert data["makespan_ratios"]["host-only"]["vs_host_only"] == pytest.approx(1.0)
    cost = data["policies"]["cost"]
    assert data["makespan_ratios"]["cost"]["vs_host_only"] == pytest.approx(
        data["policies"]["host-only"]["makespan_s"] / cost["makespan_s"]
    )


def test_cli_tables_and_single_policy() -> None:
    result = CliRunner().invoke(main, ["simulate", "backup"])
    assert result.exit_code == 0, result.output
    for text in ("backup on bluefield3", "vs host", "greedy-accelerator", "engine utilization", "host/cpu"):
        assert text in result.output
    result = CliRunner().invoke(main, ["simulate", "backup", "--policy", "dpu-only", "--seed", "4", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["policy"] == "dpu-only" and data["seed"] == 4 and data["host_cores_saved"] > 0


@pytest.mark.parametrize(
    "args",
    [
        ["simulate", "no-such-mix"],
        ["simulate", "backup", "--device", "nope"],
        ["simulate", "backup", "--device", "host"],
        ["simulate", "backup", "--policy", "fastest"],
        ["simulate"],
    ],
)
def test_cli_user_mistakes_exit_2_without_traceback(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "Error" in result.output


def test_cli_malformed_mix_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[[classes]]\nop = "filter"\nsize = -1\narrival = { process = "burst", count = 1 }\n')
    result = CliRunner().invoke(main, ["simulate", str(bad)])
    assert result.exit_code == 2 and "classes[0].size" in result.output and "Traceback" not in result.output
