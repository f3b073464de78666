"""The import contract of pyproject.toml ([tool.importlinter]): the rooms import downward only, without cycles.

A broken contract fails with import-linter's report: which room may not
import which, and the import lines that do.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from importlinter import configuration
from importlinter.application.use_cases import lint_imports

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ("layers", "acyclic")


@pytest.mark.parametrize("contract", CONTRACTS)
def test_import_contract_holds(
    contract: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    configuration.configure()  # what the lint-imports command does first
    kept = lint_imports(
        config_filename=str(ROOT / "pyproject.toml"), limit_to_contracts=(contract,), cache_dir=None, no_logo=True
    )
    report = capsys.readouterr().out
    assert kept, f"the import contract {contract!r} is broken:\n{report}"
    assert "BROKEN" not in report and "KEPT" in report
