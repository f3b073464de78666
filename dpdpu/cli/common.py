"""What the ``dpdpu`` commands share: the console they print to, the one-line error, JSON output."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from rich.console import Console

__all__ = ["DpdpuCliError", "echo_json", "make_console"]


class DpdpuCliError(click.ClickException):
    """A user-facing failure: printed as one line, exit status 1."""

    exit_code = 1


def make_console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr) that is as wide as the terminal, or 120 columns in a pipe."""
    # COLUMNS wins; otherwise pipes and CI logs get a wide fixed width instead of rich's 80 columns.
    stream = sys.stderr if stderr else sys.stdout
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) > 0 else (None if stream.isatty() else 120)
    return Console(highlight=False, width=width, stderr=stderr)


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2))
