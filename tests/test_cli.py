"""The dpdpu command line, through click's runner and once as real processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from click.testing import CliRunner

from dpdpu import __version__
from dpdpu.cli import COMMANDS, main


def test_help_documents_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "devices"):
        assert command in result.output
    assert CliRunner().invoke(main, ["demo", "--help"]).exit_code == 0


def test_the_command_list_is_the_group() -> None:
    # Every command is on the list, and nothing else joins the group (no registration on import).
    names = sorted(c.name or "" for c in COMMANDS)
    assert names == sorted(main.commands)
    families = {
        "devices": ["devices"], "demo": ["demo"], "simulate": ["simulate"], "fidelity": ["fidelity"],
        "kv": ["kv-sim", "kv-serve"],
        "agent": ["agent", "deploy", "offloads", "undeploy", "invoke", "stats", "health"],
    }  # fmt: skip
    assert names == sorted(name for family in families.values() for name in family)


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_devices_table_and_json() -> None:
    result = CliRunner().invoke(main, ["devices", "--assumptions"])
    assert result.exit_code == 0, result.output
    for text in ("bluefield2", "bluefield3", "host", "accelerator", "deflate_compress", "DOCA Compress", "assumptions"):
        assert text in result.output
    data = json.loads(CliRunner().invoke(main, ["devices", "--json"]).output)
    by_name = {d["name"]: d for d in data}
    assert by_name["bluefield2"]["hardware"]["deflate_compress"] is True
    assert by_name["bluefield3"]["hardware"]["deflate_compress"] is False
    accel = next(e for e in by_name["bluefield3"]["engines"] if e["kind"] == "accelerator")
    assert "deflate_compress" not in accel["ops"] and "deflate_decompress" in accel["ops"]


def test_demo_json_report() -> None:
    result = CliRunner().invoke(main, ["demo", "--size", "2", "--chunk", "16", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["verified"] is True and report["size"] == 2 << 20
    steps = {(s["step"], s["device"]): s for s in report["steps"]}
    assert set(steps["compress", "bluefield2"]["engines"]) <= {"bluefield2/accelerator", "bluefield2/arm"}
    assert "bluefield2/accelerator" in steps["compress", "bluefield2"]["engines"]
    assert "bluefield3/accelerator" not in steps["compress", "bluefield3"]["engines"]
    assert "no deflate_compress in bluefield3 hardware" in steps["compress", "bluefield3"]["why"]
    # pages that compress fit the hardware's 16 KiB jobs; incompressible ones grow past it
    decompress = steps["decompress", "bluefield3"]["engines"]
    assert decompress["bluefield3/accelerator"] > decompress.get("bluefield3/arm", 0)
    assert set(steps["compress", "host"]["engines"]) == {"host/cpu"}
    for step in steps.values():
        assert step["modeled_s"] > 0 and step["wall_s"] > 0


def test_user_mistakes_are_one_line_errors() -> None:
    result = CliRunner().invoke(main, ["demo", "--size", "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["nonsense"])
    assert result.exit_code == 2


def test_demo_as_a_real_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dpdpu", "demo", "--size", "2", "--chunk", "512"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "verified" in proc.stdout and "bluefield3" in proc.stdout and "fell back" in proc.stdout


def test_console_script_is_installed() -> None:
    exe = shutil.which("dpdpu")
    exe_cmd = [sys.executable, "-m", "dpdpu"] if exe is None else [exe]  # None: not installed
    proc = subprocess.run([*exe_cmd, "devices"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and "bluefield3" in proc.stdout
