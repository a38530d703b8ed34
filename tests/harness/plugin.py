"""Registers the real-server fixtures (each harness module adds its own)."""

from __future__ import annotations

import importlib

for _name in ("samba", "postgres", "emulator", "browser"):
    try:
        _module = importlib.import_module(f"tests.harness.{_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"tests.harness.{_name}":
            raise
        continue
    globals().update({k: v for k, v in vars(_module).items() if not k.startswith("_")})
