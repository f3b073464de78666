"""Shared fixtures: a runtime per device profile, and small custom profiles."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from dpdpu import Runtime
from dpdpu.runtime.profile import builtin_profiles

# Property-based fuzz tests (tests/fuzz/) take their example counts from the
# active profile: "dpdpu" keeps the suite fast; "fuzz" runs them long:
#   pytest tests/fuzz --hypothesis-profile=fuzz
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
settings.register_profile("dpdpu", max_examples=100, deadline=None, suppress_health_check=_SLOW_OK)
settings.register_profile("fuzz", max_examples=50_000, deadline=None, suppress_health_check=_SLOW_OK)
settings.load_profile("dpdpu")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--profile",
        action="append",
        default=[],
        metavar="NAME",
        help="run the device conformance suite on this profile only (repeatable; default: every built-in profile)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "profile_name" in metafunc.fixturenames:
        names = metafunc.config.getoption("profile") or builtin_profiles()
        metafunc.parametrize("profile_name", names)


@pytest.fixture
def rt(profile_name: str) -> Iterator[Runtime]:
    """A runtime on one device profile (the suite runs once per profile), keeping work on the device."""
    with Runtime(profile_name, workers=2, policy="dpu-only") as runtime:
        yield runtime


TINY_PROFILE = """
name = "tiny"
kind = "dpu"
description = "a deliberately small DPU for limit tests"

[memory]
value = {memory}
source = "test fixture"

[pcie]
gb_per_s = {{ value = 10.0, source = "test fixture" }}
fixed_us = {{ value = 1.0, source = "test fixture" }}

[hardware]
deflate_compress = {{ value = true, source = "test fixture" }}
deflate_decompress = {{ value = true, source = "test fixture" }}

[engines.accelerator]
kind = "accelerator"
lanes = {{ value = 1, source = "test fixture" }}
dispatch_us = {{ value = 1.0, source = "test fixture" }}
max_job_bytes = {{ value = {max_job}, source = "test fixture" }}

[engines.accelerator.ops.deflate_compress]
mib_per_s = 100.0
source = "test fixture"

[engines.accelerator.ops.deflate_decompress]
mib_per_s = 400.0
source = "test fixture"

[engines.arm]
kind = "arm"
lanes = {{ value = 2, source = "test fixture" }}
dispatch_us = {{ value = 1.0, source = "test fixture" }}
python_slowdown = {{ value = 4.0, source = "test fixture" }}

[engines.arm.ops.deflate_compress]
mib_per_s = 10.0
source = "test fixture"

[engines.arm.ops.deflate_decompress]
mib_per_s = 40.0
source = "test fixture"

[engines.arm.ops.crc32c]
mib_per_s = 1000.0
source = "test fixture"

[engines.arm.ops.memcpy]
mib_per_s = 1000.0
source = "test fixture"
"""


@pytest.fixture
def tiny_profile(tmp_path: Path) -> Path:
    """A DPU profile with 1 MiB of memory and a 64 KiB largest hardware job."""
    path = tmp_path / "tiny.toml"
    path.write_text(textwrap.dedent(TINY_PROFILE.format(memory=1 << 20, max_job=64 << 10)))
    return path
