"""``python -m wasmig``: the command line."""

from wasmig.cli import main

main()
