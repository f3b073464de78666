"""The vllm extra is installed, at the version whose connector API DpdpuKVConnector implements."""

from __future__ import annotations

import pytest

vllm = pytest.importorskip("vllm", reason="needs the vllm extra (pip install -e '.[vllm]'); CI runs it in .ci/vllm")


def test_vllm_is_the_version_the_connector_implements() -> None:
    from dpdpu.integrations.vllm import DpdpuKVConnector

    assert vllm.__version__.startswith("0.33.")
    assert DpdpuKVConnector.__module__ == "dpdpu.integrations.vllm.connector"
