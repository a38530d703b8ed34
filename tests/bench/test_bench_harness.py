"""Benchmarks that need the test harness load it from a source checkout, and say so elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from connector.bench import _harness
from connector.cli._app import app


def test_from_a_source_checkout_the_harness_loads() -> None:
    module = _harness.harness("postgres_server", benchmark="sync --postgres")
    assert module.__name__ == "tests.harness.postgres_server"
    assert Path(module.__file__ or "").is_relative_to(_harness.SOURCE_ROOT / "tests")


def test_without_a_checkout_the_benchmark_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_harness, "SOURCE_ROOT", tmp_path / "site-packages")  # an installed wheel has no tests/
    result = CliRunner().invoke(app, ["bench", "sync", "--postgres", "--objects", "10"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "`mvsync bench sync --postgres` needs the test harness" in message
    assert "source checkout" in message and "pip install -e ." in message
    assert result.exception is None or isinstance(result.exception, SystemExit)
