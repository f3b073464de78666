"""``python -m dpdpu`` runs the command line."""

from .cli import main

main(prog_name="dpdpu")
