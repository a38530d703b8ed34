"""``mvsync photo convert``: per-file results, outputs written despite bad files, exit codes."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from connector.cli import _app, _photo
from connector.imaging import NormalizedPhoto, PhotoSpec
from tests.imaging.images import photo

runner = CliRunner()


def _folder(tmp_path: Path, count: int) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(count):
        (folder / f"user{i}.JPG").write_bytes(photo(i))
    (folder / "notes.txt").write_text("not a photo: refused by name, like every file of the folder that is not one")
    return folder


def test_converts_a_folder_and_reports_one_json_list(tmp_path: Path) -> None:
    folder = _folder(tmp_path, 3)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    result = runner.invoke(_app.app, ["photo", "convert", str(folder), "--out", str(out), "--json"])
    assert result.exit_code == 3, result.output
    lines = json.loads(result.stdout)  # one document: the list of per-file results
    assert len(lines) == 5  # every file of the folder has a result
    by_name = {Path(line["input"]).name: line for line in lines}
    assert by_name["notes.txt"]["status"] == "error" and by_name["notes.txt"]["error"] == "not-an-image"
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
    errors = [line.get("error") for line in json.loads(result.stdout)]
    assert errors == [None, "duplicate-output", "not-a-file"]


def test_nothing_to_convert_is_an_empty_json_list(tmp_path: Path) -> None:
    """--json prints one document also when a folder holds no file: ``[]``, not nothing."""
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(_app.app, ["photo", "convert", str(empty), "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0 and result.stdout == "[]\n"


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
    [converted] = json.loads(small.stdout)
    assert converted["bytes"] <= 10_240


def _webp(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(photo(seed, size=120))).save(buffer, "WEBP", quality=80)
    return buffer.getvalue()


def test_a_folder_of_mixed_formats_gives_every_file_a_result(tmp_path: Path) -> None:
    """Issue 16: WebP converts, PSD/HEIC/text are refused by name, none is skipped in silence."""
    folder = tmp_path / "hr"
    folder.mkdir()
    (folder / "ada.webp").write_bytes(_webp(1))
    (folder / "alan.JPG").write_bytes(photo(2))
    (folder / "grace.psd").write_bytes(b"8BPS\x00\x01" + b"\x00" * 64)
    (folder / "linus.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")
    (folder / "index.txt").write_text("who is who")
    (folder / ".DS_Store").write_bytes(b"\x00\x01")  # hidden: not a photo anyone put there
    out = tmp_path / "out"
    result = runner.invoke(_app.app, ["photo", "convert", str(folder), "--out", str(out), "--json"])
    assert result.exit_code == 3, result.output
    by_name = {Path(d["input"]).name: d for d in json.loads(result.stdout)}
    assert sorted(by_name) == ["ada.webp", "alan.JPG", "grace.psd", "index.txt", "linus.heic"]
    assert by_name["ada.webp"]["status"] == "ok" and by_name["alan.JPG"]["status"] == "ok"
    assert by_name["grace.psd"]["error"] == "unsupported-image-format"
    assert "Photoshop (PSD)" in by_name["grace.psd"]["detail"]
    assert "HEIC" in by_name["linus.heic"]["detail"] and by_name["index.txt"]["error"] == "not-an-image"
    assert sorted(p.name for p in out.iterdir()) == ["ada 96x96.jpg", "alan 96x96.jpg"]

    text = runner.invoke(_app.app, ["photo", "convert", str(folder), "--out", str(tmp_path / "again")])
    assert "2 converted, 3 failed" in text.stdout


def test_one_list_of_accepted_formats_serves_convert_the_folder_agent_and_the_console() -> None:
    from connector.imaging import ACCEPTED_FORMATS_TEXT, ALLOWED_FORMATS, PHOTO_EXTENSIONS, is_photo_name
    from connector.web._photos import sniff_image_type

    assert ALLOWED_FORMATS == ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
    assert ACCEPTED_FORMATS_TEXT == "JPEG, PNG, GIF, BMP, TIFF or WebP"
    assert ".webp" in PHOTO_EXTENSIONS and is_photo_name("jdoe badge.WEBP")  # the photo-folder agent's test
    head = _webp(3)[:16]
    assert sniff_image_type(head) is None  # not served as is to browsers ...
    assert sniff_image_type(head, previewed=True) == "image/webp"  # ... but previewed as JPEG


def test_an_unexpected_decoder_failure_is_that_files_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a decoder raises on hostile input ends as a per-file result, and the next file converts."""
    real = _photo.normalize

    def struct_error_on_marked_input(data: bytes, spec: PhotoSpec) -> NormalizedPhoto:
        if data.endswith(b"boom"):
            raise struct.error("unpack requires a buffer of 4 bytes")
        return real(data, spec)

    monkeypatch.setattr(_photo, "normalize", struct_error_on_marked_input)
    (tmp_path / "a.jpg").write_bytes(photo(1) + b"boom")
    (tmp_path / "b.jpg").write_bytes(photo(2))
    args = [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"), "-o", str(tmp_path / "o")]
    result = runner.invoke(_app.app, ["photo", "convert", *args])
    assert result.exit_code == 3
    assert "image-undecodable" in result.stdout and "struct.error" not in result.stdout
    assert "1 converted, 1 failed" in result.stdout
