"""Profile files: validation with clear errors; the exception tree."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from conftest import TINY_PROFILE

from dpdpu import errors
from dpdpu.runtime.profile import Profile, builtin_profiles


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


def tiny(**changes: int) -> str:
    values = {"memory": 1 << 20, "max_job": 1 << 16, **changes}
    return TINY_PROFILE.format(**values)


def test_builtin_profiles_load_with_the_capability_matrix() -> None:
    assert builtin_profiles() == ["bluefield2", "bluefield3", "host"]
    bf2, bf3 = Profile.load("bluefield2"), Profile.load("bluefield3")
    assert bf2.hardware["deflate_compress"].value is True
    assert bf3.hardware["deflate_compress"].value is False
    assert bf3.hardware["lz4_decompress"].value is True
    assert "deflate_compress" in bf2.engine("accelerator").ops
    assert "deflate_compress" not in bf3.engine("accelerator").ops
    assert bf3.engine("arm").lanes.value == 16 and bf2.engine("arm").lanes.value == 8
    # the dpKernels points are kept verbatim and fitted: hardware beats Arm cores at every size
    hw, arm = bf3.engine("accelerator").costs["deflate_decompress"], bf3.engine("arm").costs["deflate_decompress"]
    for size in (64, 1024, 4096, 1 << 20):
        assert hw.seconds(size) < arm.seconds(size)
    assert all(line for line in bf3.assumptions())
    assert any("PCIe" in line for line in bf3.assumptions())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.replace('source = "test fixture"\n', "", 1), "source"),
        (lambda t: t.replace('kind = "arm"', 'kind = "gpu"'), "kind"),
        (lambda t: t.replace("mib_per_s = 10.0", "mib_per_s = -1.0"), "positive"),
        (lambda t: t.replace("[engines.arm.ops.crc32c]", "[engines.arm.ops.sha1]"), "unknown op"),
        (lambda t: t.replace("deflate_compress = {", "lz4_decompress = {"), "hardware"),
        (lambda t: t.replace('kind = "dpu"', 'kind = "dpu"\n[[broken'), "TOML"),
        (lambda t: t.replace("[pcie]", "[pcie_missing]"), "pcie"),
    ],
)
def test_malformed_profiles_name_the_problem(tmp_path: Path, mutate, message: str) -> None:
    with pytest.raises(errors.ProfileError, match=message):
        Profile.load(write(tmp_path, mutate(tiny())))


def test_unknown_builtin_profile() -> None:
    with pytest.raises(errors.UnknownDeviceError, match="built-in profiles"):
        Profile.load("nope")


def test_error_tree() -> None:
    leaves = [
        errors.InvalidArgumentError, errors.UnknownOpError, errors.UnsupportedOpError, errors.JobTooLargeError,
        errors.DeviceMemoryError, errors.CorruptDataError, errors.TruncatedDataError, errors.BufferTooSmallError,
        errors.QueueFullError, errors.RuntimeClosedError, errors.UnknownDeviceError, errors.ProfileError,
        errors.NativeBuildError, errors.InternalError, errors.ExpressionError, errors.ExpressionSyntaxError,
        errors.UnknownColumnError, errors.ExpressionTypeError, errors.StorageError, errors.NoSuchFileError,
        errors.FileExistsStorageError, errors.FileTypeError, errors.DirectoryNotEmptyError, errors.DeviceFullError,
        errors.InvalidPathError, errors.JournalCorruptError,
    ]  # fmt: skip
    for cls in leaves:
        assert issubclass(cls, errors.DpdpuError)
    assert issubclass(errors.DeviceMemoryError, MemoryError)
    assert issubclass(errors.CorruptDataError, ValueError)
    assert issubclass(errors.UnknownOpError, LookupError)
    assert issubclass(errors.UnknownColumnError, errors.ExpressionError)
    assert issubclass(errors.ExpressionTypeError, errors.InvalidArgumentError)
    assert set(errors.__all__) == {c.__name__ for c in leaves} | {"DpdpuError"}


def test_errors_carry_context_and_pickle() -> None:
    err = errors.CorruptDataError("bad stream", device="bluefield3", engine="accelerator", op="deflate_decompress")
    assert str(err) == "bluefield3/accelerator: deflate_decompress: bad stream"
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is errors.CorruptDataError and str(copy) == str(err) and copy.engine == "accelerator"
    relabeled = errors.UnknownOpError("unknown codec", op="x").on("host")
    assert str(relabeled) == "host: x: unknown codec"
