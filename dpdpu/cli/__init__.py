"""The ``dpdpu`` command line: one click group and the list of its commands.

Each family of commands lives in a module of its own (:mod:`.devices`,
:mod:`.demo`, :mod:`.simulate`, :mod:`.fidelity`, :mod:`.kv`, :mod:`.agent`);
:data:`COMMANDS` is the whole list, added to :func:`main` here and nowhere
else.  Importing a command module adds nothing anywhere.
"""

from __future__ import annotations

from typing import Any

import click

from .._version import __version__
from ..errors import DpdpuError
from .agent import AGENT_COMMANDS
from .common import DpdpuCliError
from .demo import demo
from .devices import devices
from .fidelity import fidelity
from .kv import kv_serve, kv_sim
from .simulate import simulate

__all__ = ["COMMANDS", "DpdpuCliError", "main"]

#: Every command of ``dpdpu``.
COMMANDS: tuple[click.Command, ...] = (devices, demo, simulate, fidelity, kv_sim, kv_serve, *AGENT_COMMANDS)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DpdpuError as exc:
            raise DpdpuCliError(str(exc)) from exc


@click.group(
    cls=_Group,
    commands=COMMANDS,
    context_settings={"auto_envvar_prefix": "DPDPU", "help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="dpdpu")
def main() -> None:
    """dpdpu: offload data processing to DPUs, or to the built-in DPU emulator.

    Devices are emulated from profiles (bluefield2, bluefield3, host) that
    carry each device's capabilities and cost figures with their sources.
    Set DPDPU_DEVICE to choose the device the Python API uses by default.
    """
