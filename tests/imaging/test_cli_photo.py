"""``mvsync photo convert``: per-file results, outputs written despite bad files, exit codes."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from connector.cli import _app
from tests.imaging.images import photo

runner = CliRunner()


def _folder(tmp_path: Path, count: int) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(count):
        (folder / f"user{i}.JPG").write_bytes(photo(i))
    (folder / "notes.txt").write_text("not a photo, not picked up from a folder")
    return folder


def test_converts_a_folder_and_reports_json_lines(tmp_path: Path) -> None:
    folder = _folder(tmp_path, 3)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    result = runner.invoke(_app.app, ["photo", "convert", str(folder), "--out", str(out), "--json"])
    assert result.exit_code == 3, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 4
    by_name = {Path(line["input"]).name: line for line in lines}
    assert by_name["broken.png"]["status"] == "error" and by_name["broken.png"]["error"] == "truncated-image"
    assert sorted(p.name for p in out.iterdir()) == ["user0 96x96.jpg", "user1 96x96.jpg", "user2 96x96.jpg"]
    for p in out.iterdir():
        assert Image.open(io.BytesIO(p.read_bytes())).size == (96, 96)
        assert p.stat().st_size <= 10240
    ok = by_name["user0.JPG"]
    assert ok["status"] == "ok" and ok["width"] == 96 and ok["bytes"] <= 10240


def test_all_good_exits_zero_with_size_and_budget(tmp_path: Path) -> None:
    source = tmp_path / "jdoe.jpg"
    source.write_bytes(photo(9, size=900))
    out = tmp_path / "out"
    args = ["photo", "convert", str(source), "--out", str(out), "--size", "648", "--max-bytes", "100 KB"]
    result = runner.invoke(_app.app, args)
    assert result.exit_code == 0, result.output
    written = out / "jdoe 648x648.jpg"
    assert Image.open(written).size == (648, 648) and written.stat().st_size <= 102_400
    assert "1 converted, 0 failed" in result.stdout


def test_missing_input_and_name_collisions_are_per_file_errors(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(photo(1))
    (tmp_path / "a.png").write_bytes(photo(2))
    args = ["photo", "convert", str(tmp_path / "a.jpg"), str(tmp_path / "a.png"), str(tmp_path / "gone.jpg")]
    result = runner.invoke(_app.app, [*args, "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 3
    errors = [json.loads(line).get("error") for line in result.stdout.splitlines()]
    assert errors == [None, "duplicate-output", "not-a-file"]


def test_bad_options_are_usage_errors(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    for option in (["--max-bytes", "200KB"], ["--size", "4"], ["--crop", "top"], ["--margin", "60"]):
        result = runner.invoke(_app.app, ["photo", "convert", str(tmp_path), "--out", out, *option])
        assert result.exit_code == 2, option


def test_progress_for_many_files(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(12):
        (folder / f"u{i}.png").write_bytes(photo(i, size=128))
    result = runner.invoke(_app.app, ["photo", "convert", str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "12 converted, 0 failed" in result.stdout


def test_the_default_byte_budget_follows_the_size(tmp_path: Path) -> None:
    """10 KB (AD's thumbnail guidance) for 96x96; a 648x648 Exchange photo gets AD's hard 100 KB limit."""
    source = tmp_path / "jdoe.jpg"
    source.write_bytes(photo(9, size=900))
    result = runner.invoke(_app.app, ["photo", "convert", str(source), "--out", str(tmp_path / "hd"), "--size", "648"])
    assert result.exit_code == 0, result.output
    written = tmp_path / "hd" / "jdoe 648x648.jpg"
    assert Image.open(written).size == (648, 648) and 10_240 < written.stat().st_size <= 102_400
    small = runner.invoke(_app.app, ["photo", "convert", str(source), "--out", str(tmp_path / "ad"), "--json"])
    assert small.exit_code == 0, small.output
    assert json.loads(small.stdout)["bytes"] <= 10_240
