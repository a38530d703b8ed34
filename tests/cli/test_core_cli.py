"""The everyday commands through the real CLI app: exit codes, --json, dry runs, error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connector.cli import app
from tests.cli._configs import generated_pair

CONFIG = (
    generated_pair(30)
    + """[run_profiles.export]
steps = [{ type = "export", agent = "tgt", deletion_threshold = { count = 0, attributes = ["thumbnailChecksum"] } }]
"""
)

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mvsync.toml"
    path.write_text(CONFIG)
    return path


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout


def test_run_json_history_and_lineage(config: Path) -> None:
    code, out = invoke("run", "cycle", "-c", str(config), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["status"] == "success" and [s["kind"] for s in doc["steps"]][-1] == "full-sync"
    code, out = invoke("history", "list", "-c", str(config), "--json")
    assert code == 0 and json.loads(out)[0]["profile"] == "cycle"
    code, out = invoke("history", "show", str(doc["run_id"]), "-c", str(config), "--json")
    assert json.loads(out)["steps"][2]["counters"]["projections"] == 30
    code, out = invoke("mv", "show", "u0000007", "-c", str(config), "--json")
    shown = json.loads(out)
    assert shown["attributes"]["displayName"] == {"value": "User 7", "agent": "src", "rule": "displayName"}
    assert {c["agent"] for c in shown["connectors"]} == {"src", "tgt"}
    code, out = invoke("mv", "search", "user 1", "-c", str(config), "--json")
    assert code == 0 and len(json.loads(out)) >= 1
    code, out = invoke("cs", "show", "tgt", "u0000007", "-c", str(config), "--json")
    assert json.loads(out)["pending_export"] == "update"


def test_dry_run_prints_json_lines_and_writes_nothing(config: Path) -> None:
    invoke("run", "cycle", "-c", str(config))
    code, out = invoke("run", "export", "-c", str(config), "--dry-run")
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert code == 0 and len(lines) == 30 and all(line["dry_run"] for line in lines)
    code, out = invoke("pending-exports", "tgt", "-c", str(config), "--format", "csv")
    assert out.splitlines()[0].startswith("anchor,dn,omodt,attribute,amodt") and len(out.splitlines()) == 31


def test_dry_run_json_is_one_document_with_the_changes_in_it(config: Path) -> None:
    """``--json`` prints one document (README: Output for scripts): the would-be changes are the result's
    ``dry_run_changes``, no longer JSON lines printed ahead of it."""
    invoke("run", "cycle", "-c", str(config))
    _, lines = invoke("run", "export", "-c", str(config), "--dry-run")
    code, out = invoke("run", "export", "-c", str(config), "--dry-run", "--json")
    doc = json.loads(out)  # the whole of stdout: one document
    assert code == 0 and doc["dry_run"] is True and doc["run_id"] is None and doc["status"] == "success"
    changes = [json.loads(line) for line in lines.splitlines() if line.startswith("{")]
    assert len(doc["dry_run_changes"]) == 30
    assert doc["dry_run_changes"] == [{k: v for k, v in c.items() if k != "dry_run"} for c in changes]
    code, out = invoke("run", "cycle", "-c", str(config), "--json")
    assert code == 0 and "dry_run_changes" not in json.loads(out)  # a real run's result is as before


def test_exit_codes_for_stopped_and_config_errors(config: Path, tmp_path: Path) -> None:
    invoke("run", "cycle", "-c", str(config))
    # the source suddenly returns nothing: the full import refuses to mark 30 objects deleted
    config.write_text(CONFIG.replace("count = 30, photo_bytes = 16", "count = 0, photo_bytes = 16"))
    code, out = invoke("run", "cycle", "-c", str(config), "--json")
    assert code == 4 and json.loads(out)["status"] == "stopped-empty-import"
    code, out = invoke("run", "cycle", "-c", str(config), "--json", "--allow-empty-import")
    assert code == 0

    bad = tmp_path / "bad.toml"
    bad.write_text(
        CONFIG.replace(
            'type = "connector.bench.generated:GeneratedConnector"\nsettings = { count = 30, photo_bytes = 16 }',
            'type = "connector.bench.generated:GeneratedConnector"\nsettings = { count = 30, colour = "red" }',
        )
    )
    result = runner.invoke(app, ["run", "cycle", "-c", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}: agents.src.settings.colour: unknown key" in result.stderr
    code, _ = invoke("run", "cycle", "-c", str(tmp_path / "missing.toml"))
    assert code == 2


def test_init_writes_a_valid_starter(tmp_path: Path) -> None:
    target = tmp_path / "new.toml"
    code, out = invoke("init", str(target))
    assert code == 0 and target.exists()
    # the folder it names is there (empty), and the message says what goes in it
    assert (tmp_path / "photos").is_dir() and f"in {tmp_path / 'photos'}" in out
    code, _ = invoke("run", "Full Import (Stage Only)", "-c", str(target))
    assert code == 0
    code, _ = invoke("init", str(target))
    assert code == 2  # refuses to overwrite without --force


def test_init_given_a_folder_sets_it_up_with_mvsync_toml(tmp_path: Path) -> None:
    """`mvsync init C:\\mvsync` (as `git init DIR`) said "cannot write ...: Is a directory" with --force."""
    code, out = invoke("init", str(tmp_path))
    assert code == 0 and (tmp_path / "mvsync.toml").is_file() and (tmp_path / "photos").is_dir()
    assert f"-c {tmp_path / 'mvsync.toml'}" in out
    assert invoke("init", str(tmp_path))[0] == 2  # the file in it is not overwritten without --force
    assert invoke("init", str(tmp_path), "--force")[0] == 0


def test_init_into_a_folder_that_is_not_there_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    target = tmp_path / "no-such-folder" / "mvsync.toml"
    result = runner.invoke(app, ["init", str(target)])
    assert (result.exit_code == 2 and result.exception is None) or isinstance(result.exception, SystemExit)
    assert result.stderr.startswith(f"error: cannot write {target}: ") and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_dry_run_before_the_first_run_creates_no_store(config: Path, tmp_path: Path) -> None:
    """A dry run is how an engineer previews the first run. It created the store (the file, its
    schema and its lock folder) while it said "nothing was written"; now it previews against an
    empty store in memory and says so, and the configured store stays absent."""
    result = CliRunner().invoke(app, ["run", "cycle", "-c", str(config), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"][2]["counters"]["projections"] == 30
    assert "no store" in result.stderr and "nothing is created" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mvsync.toml"]


def test_a_read_only_command_names_itself_to_the_store_as_typed(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The name a read-only command registers under (what `mvsync store restore` says holds the store):
    its command words, not its options or arguments. Found by the fresh-clone CI: the name came from
    click's current context, and the base install has no click (every read-only command ended in a
    traceback there), while typer's own copy of click keeps a context stack that click does not see."""
    from connector.cli import _core

    named: list[object] = []
    real = _core.SqlStore

    def recording(*args: object, **kwargs: object) -> object:
        named.append(kwargs.get("reader"))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    assert runner.invoke(app, ["run", "cycle", "-c", str(config)]).exit_code == 0
    monkeypatch.setattr(_core, "SqlStore", recording)
    result = runner.invoke(app, ["--log-level", "INFO", "history", "list", "-c", str(config)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["mv", "search", "history", "-c", str(config)])  # an argument named like a group
    assert result.exit_code == 0, result.output
    assert named == ["mvsync history list", "mvsync mv search"]
