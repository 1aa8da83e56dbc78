"""The observability tests, a package so that their conftest has a module name of its own.

Without it, mypy (checking tests/ in one run) would see two top-level modules named
``conftest``; pytest imports this directory's modules as ``observability.*``.
"""
