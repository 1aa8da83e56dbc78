"""``python -m entra_tokend``."""

from entra_tokend.cli import main

raise SystemExit(main())
