"""The README's "Using dpdpu as vLLM's KV tier": its kv-sim figures are what ``dpdpu kv-sim`` prints.

(The section's commands need the vllm extra and run in the vLLM job: tests/vllm_connector/test_vllm_readme.py.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from dpdpu.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def section() -> str:
    text = README.read_text()
    start = text.index("## Using dpdpu as vLLM's KV tier")
    return text[start : text.index("\n## ", start + 1)]


def test_the_offload_figures_are_kv_sims() -> None:
    rows = re.findall(
        r"^\| `(bluefield\d)` [^|]*\| ([\d.]+)% \| (\d+) ms \| (\d+) ms \| ([\d.]+)x \|$", section(), re.M
    )
    assert {row[0] for row in rows} == {"bluefield2", "bluefield3"}
    for device, hit, recompute, tier, speedup in rows:
        res = CliRunner().invoke(main, ["kv-sim", "--device", device, "--json"])
        assert res.exit_code == 0, res.output
        report = json.loads(res.output)
        assert f"{report['hit_rate'] * 100:.1f}" == hit
        assert f"{report['ttft_recompute']['mean'] * 1e3:.0f}" == recompute
        assert f"{report['ttft_tier']['mean'] * 1e3:.0f}" == tier
        assert f"{report['speedup_tier']:.2f}" == speedup
        if device == "bluefield2":
            assert f"recovers {report['speedup_adaptive']:.2f}x" in section()
