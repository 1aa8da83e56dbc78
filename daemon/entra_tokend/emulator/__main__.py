"""``python -m entra_tokend.emulator``: the emulator without the daemon's CLI."""

import sys

from entra_tokend.emulator.cli import main

raise SystemExit(main(sys.argv[1:]))
