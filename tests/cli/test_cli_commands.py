"""The inspection commands through the real CLI app: connectors, schema, cs search, pending-exports,
history tables, and the exit code of a run that completes with per-object errors."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from connector.bench import generated
from connector.cli import app
from tests.cli._configs import generated_pair, with_directory

CONFIG = (
    generated_pair(5)
    + """[agents.mem]
type = "tests.engine.memory:MemoryConnector"
settings = { directory = "DIRECTORY", rendered = ["photo"] }
[run_profiles.export]
steps = [{ type = "export", agent = "tgt" }]
[run_profiles.mem-import]
steps = [{ type = "full-import", agent = "mem" }]
"""
)

ANCHORS = [f"u{n:07d}" for n in range(5)]
BUILT_IN = {"active-directory", "exchange-online-photos", "photo-folder", "active-directory-snapshot"}

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path, mem: dict[str, Any]) -> Path:
    return with_directory(tmp_path, mem, CONFIG)


def invoke(*args: str) -> tuple[int, str]:
    # wide enough that rich never folds a table cell or wraps a line the tests look for
    result = runner.invoke(app, list(args), env={"COLUMNS": "250"})
    return result.exit_code, result.stdout


def line_with(out: str, text: str) -> str:
    found = [line for line in out.splitlines() if text in line]
    assert len(found) == 1, (text, out)
    return found[0]


def expected_checksum(n: int) -> str:
    """What tgt's export flow computes for person n: sha256 of the generated src photo (16 bytes asked, seed 1)."""
    return hashlib.sha256(generated.photo(1, n, 0, 16)).hexdigest()


def test_connectors_list_table_and_json() -> None:
    code, out = invoke("connectors", "list")
    assert code == 0
    for name in BUILT_IN:
        assert name in out
    assert "mvsync" in line_with(out, "connector.demo:DirectorySnapshotConnector")
    assert "generated" not in out  # the benchmarks register their synthetic agent themselves

    code, out = invoke("connectors", "list", "--json")
    assert code == 0
    infos = {i["name"]: i for i in json.loads(out)}
    assert set(infos) >= BUILT_IN
    assert infos["active-directory-snapshot"]["target"] == "connector.demo:DirectorySnapshotConnector"
    assert infos["photo-folder"]["distribution"] == "mvsync" and infos["photo-folder"]["version"] not in ("", "?")


def test_schema_shows_anchor_and_attributes(config: Path) -> None:
    code, out = invoke("schema", "tgt", "-c", str(config))
    assert code == 0
    assert "person (anchor accountName)" in out
    assert "binary" in line_with(out, " photo ")
    for attribute in ("displayName", "mail", "thumbnailChecksum"):
        assert attribute in out

    code, out = invoke("schema", "mem", "-c", str(config))
    assert code == 0 and "user (anchor id)" in out
    assert "yes" in line_with(out, " groups ")  # multi-valued
    assert "yes" not in line_with(out, " mail ")
    assert "import-export, rendered by the target" in line_with(out, " photo ")  # the target re-encodes it
    assert "rendered" not in line_with(out, " thumbnail ")

    code, out = invoke("schema", "mem", "-c", str(config), "--json")
    (user,) = json.loads(out)["object_classes"]
    assert user["name"] == "user" and user["anchor"] == "id"
    assert next(a for a in user["attributes"] if a["name"] == "groups")["multivalued"] is True
    assert next(a for a in user["attributes"] if a["name"] == "photo")["rendered_by_target"] is True

    result = runner.invoke(app, ["schema", "nope", "-c", str(config)])
    assert result.exit_code == 2 and "unknown agent 'nope'" in result.stderr


def test_cs_search_and_pending_export_scope(config: Path) -> None:
    assert invoke("run", "cycle", "-c", str(config))[0] == 0
    code, out = invoke("cs", "search", "tgt", "-c", str(config))
    assert code == 0
    for anchor in ANCHORS:
        assert "update" in line_with(out, anchor)  # joined, with a pending export

    code, out = invoke("cs", "search", "tgt", "-c", str(config), "--pending-export", "--json")
    docs = json.loads(out)
    assert [d["anchor"] for d in docs] == ANCHORS
    assert all(d["pending_export"] == "update" and d["metaverse_id"] is not None for d in docs)
    assert docs[2]["pending_export_changes"] == {"thumbnailChecksum": expected_checksum(2)}

    code, out = invoke("cs", "search", "tgt", "-c", str(config), "--anchor", "0000003", "--json")
    assert [d["anchor"] for d in json.loads(out)] == ["u0000003"]

    assert invoke("run", "export", "-c", str(config))[0] == 0
    code, out = invoke("cs", "search", "tgt", "-c", str(config), "--pending-export")
    assert code == 0 and not any(anchor in out for anchor in ANCHORS)
    code, out = invoke("cs", "search", "tgt", "-c", str(config))
    for anchor in ANCHORS:  # still there, nothing pending any more
        assert "update" not in line_with(out, anchor)


def test_pending_exports_json_and_csv(config: Path) -> None:
    assert invoke("run", "cycle", "-c", str(config))[0] == 0
    code, out = invoke("pending-exports", "tgt", "-c", str(config), "--format", "json")
    assert code == 0
    records = json.loads(out)
    assert [r["anchor"] for r in records] == ANCHORS
    assert records[4] == {
        "anchor": "u0000004",
        "dn": None,
        "omodt": "update",
        "attribute": "thumbnailChecksum",
        "amodt": "add",  # tgt has no thumbnailChecksum yet
        "before": "",
        "after": expected_checksum(4),
        "last_error": "",
    }

    code, out = invoke("pending-exports", "tgt", "-c", str(config), "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows == [{k: "" if v is None else str(v) for k, v in r.items()} for r in records]

    # nothing pending after the export: csv is just the header, json an empty list
    assert invoke("run", "export", "-c", str(config))[0] == 0
    code, out = invoke("pending-exports", "tgt", "-c", str(config), "--format", "csv")
    assert code == 0 and out.splitlines() == ["anchor,dn,omodt,attribute,amodt,before,after,last_error"]
    assert invoke("pending-exports", "tgt", "-c", str(config), "--format", "json") == (0, "[]\n")
    assert invoke("pending-exports", "tgt", "-c", str(config), "--format", "xml")[0] == 2


def test_pending_exports_checks_format_also_with_json(config: Path) -> None:
    """--format is checked before --json is honoured: --format xml --json printed ``[]`` (exit 0), and
    --format csv --json quietly printed JSON. Both are usage errors now, with the failure object."""
    assert invoke("run", "cycle", "-c", str(config))[0] == 0
    code, out = invoke("pending-exports", "tgt", "-c", str(config), "--format", "xml", "--json")
    doc = json.loads(out)
    assert code == 2 and doc["status"] == "stopped-configuration" and doc["exit_code"] == 2
    assert doc["message"] == "--format must be json, csv or table, not 'xml'"
    code, out = invoke("pending-exports", "tgt", "-c", str(config), "--format", "csv", "--json")
    doc = json.loads(out)
    assert code == 2 and doc["exit_code"] == 2 and "--json and --format csv conflict" in doc["message"]
    json_only = invoke("pending-exports", "tgt", "-c", str(config), "--json")
    assert json_only[0] == 0 and json_only == invoke("pending-exports", "tgt", "-c", str(config), "--format", "json")
    assert json_only == invoke("pending-exports", "tgt", "-c", str(config), "--format", "json", "--json")


def test_history_list_and_show_as_tables(config: Path) -> None:
    code, out = invoke("run", "cycle", "-c", str(config), "--json")
    assert code == 0
    cycle_id = json.loads(out)["run_id"]
    code, out = invoke("run", "export", "-c", str(config), "--json")
    export_id = json.loads(out)["run_id"]

    code, out = invoke("history", "list", "-c", str(config))
    assert code == 0
    lines = out.splitlines()
    cycle_line = line_with(out, " cycle ")
    export_line = line_with(out, " export ")
    assert str(cycle_id) in cycle_line and "success" in cycle_line
    assert str(export_id) in export_line and "success" in export_line
    assert lines.index(export_line) < lines.index(cycle_line)  # newest first

    code, out = invoke("history", "show", str(cycle_id), "-c", str(config))
    assert code == 0
    assert out.splitlines()[0] == f"run {cycle_id} cycle: success"
    assert "src full-import: success" in out and "tgt full-sync: success" in out
    assert "projections=5" in out and "joins=5" in out and "export_updates=5" in out

    code, out = invoke("history", "show", str(export_id), "-c", str(config))
    assert "tgt export: success" in out and "export_updates=5" in out
    result = runner.invoke(app, ["history", "show", "999", "-c", str(config)])
    assert result.exit_code == 2 and "no run 999" in result.stderr


def test_run_exits_3_when_a_step_completes_with_per_object_errors(config: Path, mem: dict[str, Any]) -> None:
    mem["objects"].update({"m1": {"accountName": "a1"}, "m2": {"accountName": "a2"}, "m3": {"accountName": "a3"}})
    mem["errors"]["m2"] = ("read-error", "photo service said 500")

    code, out = invoke("run", "mem-import", "-c", str(config))
    assert code == 3
    assert "mem-import: completed-discovery-errors" in out
    assert "read-error m2 (a2): photo service said 500" in out

    code, out = invoke("run", "mem-import", "-c", str(config), "--json")
    doc = json.loads(out)
    assert code == 3 and doc["status"] == "completed-discovery-errors"
    assert doc["steps"][0]["errors"] == 1 and doc["steps"][0]["counters"]["import_errors"] == 1

    # the objects that could be read were staged all the same
    code, out = invoke("cs", "search", "mem", "-c", str(config), "--pending-import", "--json")
    assert [d["anchor"] for d in json.loads(out)] == ["m1", "m3"]
    # without the error the run succeeds again
    mem["errors"].clear()
    assert invoke("run", "mem-import", "-c", str(config))[0] == 0


def test_error_details_print_verbatim(config: Path, mem: dict[str, Any]) -> None:
    """Error details come from directories and may hold brackets; they are text, not console markup."""
    mem["objects"].update({"m1": {"accountName": "a1"}, "m2": {"accountName": "a2"}})
    mem["errors"]["m1"] = ("referral", "0000202B: RefErr [ref 1: 'dc2.example.test']")
    mem["errors"]["m2"] = ("read-error", "path [/photos] is not readable")

    code, out = invoke("run", "mem-import", "-c", str(config))
    assert code == 3, out
    assert "referral m1 (a1): 0000202B: RefErr [ref 1: 'dc2.example.test']" in out
    assert "read-error m2 (a2): path [/photos] is not readable" in out

    code, out = invoke("history", "list", "-c", str(config), "--limit", "1")
    run_id = line_with(out, "mem-import").split()[1]
    code, out = invoke("history", "show", run_id, "-c", str(config))
    assert code == 0, out
    assert "mem full-import: completed-discovery-errors" in out
    assert "[error] referral m1 (a1): 0000202B: RefErr [ref 1: 'dc2.example.test']" in out
    assert "[error] read-error m2 (a2): path [/photos] is not readable" in out
