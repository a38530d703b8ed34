"""The emulators' one optional dependency: without the ``emulator`` extra (trustme) they refuse to start
with a message naming the extra and exit code 2, and leave no temporary folder behind."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connector.cli import app
from connector.emulator import EmulatorConfig, GraphEmulator
from connector.emulator._ews import EwsConfig, EwsEmulator
from connector.sdk import ConfigurationError


@pytest.fixture
def without_trustme(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """trustme uninstalled, as far as ``import trustme`` can tell; temporary folders go to ``tmp_path``."""
    monkeypatch.setitem(sys.modules, "trustme", None)  # None in sys.modules makes the import fail
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("start", [lambda: GraphEmulator(EmulatorConfig(users=1)), lambda: EwsEmulator(EwsConfig())])
def test_an_emulator_without_the_extra_names_it_and_leaves_nothing(without_trustme: Path, start: object) -> None:
    emulator = start()  # type: ignore[operator]
    with pytest.raises(ConfigurationError, match=r"'emulator' extra .*pip install 'mvsync\[emulator\]'"):
        emulator.start()
    assert list(without_trustme.iterdir()) == []


def test_emulator_serve_without_the_extra_exits_2_with_the_hint(without_trustme: Path) -> None:
    result = CliRunner().invoke(app, ["emulator", "serve", "--users", "1"])
    assert result.exit_code == 2
    assert "mvsync[emulator]" in result.stderr
    assert "Traceback" not in result.output
