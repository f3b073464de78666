"""The README's "Using dpdpu as vLLM's KV tier" block: the tier starts as written, and vLLM takes the
``--kv-transfer-config`` line as written (parsed by vLLM's own parser) and builds its scheduler from it."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from pydantic import TypeAdapter
from vllm.config import KVTransferConfig
from vllm_harness import scheduler, tiny_llama, vllm_config

from dpdpu.integrations.vllm import DpdpuKVConnector

README = Path(__file__).resolve().parents[2] / "README.md"


def block() -> list[list[str]]:
    text = README.read_text()
    start = text.index("## Using dpdpu as vLLM's KV tier")
    console = re.search(r"```console\n(.*?)```", text[start:], re.S)
    assert console is not None
    return [shlex.split(line[2:]) for line in console.group(1).splitlines() if line.startswith("$ ")]


def test_the_readme_block_configures_vllm(tmp_path: Path) -> None:
    install, serve, vllm = block()
    assert install == ["pip", "install", "dpdpu[vllm]"]
    assert serve[:2] == ["dpdpu", "kv-serve"] and vllm[:2] == ["vllm", "serve"]
    args = dict(zip(serve[2::2], serve[3::2], strict=True))
    assert set(args) == {"--listen", "--data-dir"}
    # As written, but on a free port and in a scratch directory.
    cmd = [sys.executable, "-m", "dpdpu", "kv-serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "kv")]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            port = json.loads(proc.stdout.readline())["port"]
            line = vllm[vllm.index("--kv-transfer-config") + 1]
            written = TypeAdapter(KVTransferConfig).validate_json(line)  # how vLLM's CLI reads the option
            extra = dict(written.kv_connector_extra_config)
            assert extra.pop("store") == args["--listen"]
            config = vllm_config(tiny_llama(tmp_path / "tiny"), f"127.0.0.1:{port}")
            written.kv_connector_extra_config = {**extra, "store": f"127.0.0.1:{port}"}
            config.kv_transfer_config = written
            sched = scheduler(config)
            assert isinstance(sched.connector, DpdpuKVConnector)
            assert sched.connector.settings.policy == "s3fifo" and sched.connector.settings.device == "bluefield3"
            assert written.kv_load_failure_policy == "recompute" and written.kv_role == "kv_both"
        finally:
            proc.terminate()
            proc.wait(30)
