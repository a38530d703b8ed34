"""photo-folder on the bad days of an HR share: through the real CLI where a user meets them, else as the
engine drives the agent's import (``run_import``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.agents.photo_folder.helpers import by_anchor, cli_config, connector, run_import
from tests.cli._configs import invoke
from tests.imaging.images import encode, photo


def test_a_file_size_limit_past_the_decoders_is_a_configuration_error_not_a_stopped_step(tmp_path: Path) -> None:
    """Found in the photo-folder bad-day pass: ``max_file_bytes = 3000000000`` (an administrator letting
    big scans in) was accepted, doctor passed, and the import stopped at the first photo as
    stopped-connector-exception (exit 4) with a traceback in the log: ``InvalidSpecError: max_input_bytes:
    3000000000 is outside 1..2147483648``, a name the configuration does not have. It is now refused with
    the configuration (exit 2), naming the setting and its bound, before any step runs."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "ann.jpg").write_bytes(photo(1, size=64))
    config = cli_config(tmp_path, folder, max_file_bytes=3_000_000_000)
    code, out, err = invoke("run", "full", "-c", str(config))
    assert code == 2, (out, err)
    assert "agents.hr.settings.max_file_bytes" in err and "2147483648" in err, err
    assert "Traceback" not in out + err and "max_input_bytes" not in err
    code, out, _ = invoke("doctor", "-c", str(config), "--json")
    findings = json.loads(out)["findings"]
    assert any(f["severity"] == "error" and "max_file_bytes" in f["message"] for f in findings), findings

    config = cli_config(tmp_path, folder, max_file_bytes=2_147_483_648)  # the bound itself is a good value
    assert invoke("run", "full", "-c", str(config))[0] == 0


def test_raising_a_limit_lets_the_next_delta_import_read_the_photos_it_refused(tmp_path: Path) -> None:
    """Found in the photo-folder bad-day pass: photos over the limits (HR's 50 MB scan, a 9000x9000
    export; small limits here) were refused (file-too-large, image-too-many-pixels), the administrator
    raised max_file_bytes and max_pixels, and every delta import went on repeating the old errors, naming
    the old limits, from the watermark (an unchanged broken file is not read again), until a full import.
    The watermark now keeps the limits its errors were judged by; under other limits the files are read
    again."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "ann.jpg").write_bytes(photo(1, size=64))
    (folder / "bob.jpg").write_bytes(photo(2, size=300))  # about 20 KB
    (folder / "cid.png").write_bytes(encode(Image.new("RGB", (1200, 1000), (90, 90, 90)), "PNG"))
    tight = cli_config(tmp_path, folder, max_file_bytes=15_000, max_pixels=1_000_000)
    code, out, err = invoke("run", "full", "-c", str(tight))
    assert code == 3 and "over max_file_bytes=15,000" in out and "over the limit of 1,000,000" in out, (out, err)

    raised = cli_config(tmp_path, folder)  # the defaults: 20 MB, 50 million pixels
    code, out, err = invoke("run", "delta", "-c", str(raised), "--json")
    assert code == 0, (out, err)
    [step] = json.loads(out)["steps"]
    assert step["counters"].get("adds") == 2, step
    code, out, _ = invoke("cs", "search", "hr", "-c", str(raised), "--json")
    assert sorted(o["anchor"] for o in json.loads(out)) == ["ann", "bob", "cid"]
    code, out, _ = invoke("run", "delta", "-c", str(raised), "--json")  # and then quiet, reading nothing again
    assert code == 0 and json.loads(out)["steps"][0]["counters"] == {"pages": 1}, out


@pytest.mark.parametrize("space", ["\u00a0", "\u3000", "\u202f"], ids=["no-break", "ideographic", "narrow-no-break"])
def test_a_name_whose_space_is_not_ascii_is_the_account_up_to_it(tmp_path: Path, space: str) -> None:
    """Found in the photo-folder bad-day pass: 'jdoe<no-break space>2024.jpg' (a name pasted from a web page or
    Word, or typed with an IME's full-width space) looks like 'jdoe 2024.jpg', yet was an invalid-file-name
    error saying the name 'has control characters or invalid bytes ... another code page', and jdoe had no
    photo. Any space character now ends the account name (export already refused an anchor with any
    white space, as the account name ending there); control characters (a tab, a newline) are still errors."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / f"jdoe{space}2024.jpg").write_bytes(photo(1, size=64))
    (folder / "tab\there.jpg").write_bytes(photo(2, size=64))
    found = by_anchor(run_import(connector(tmp_path, folder))[0])
    assert sorted(found) == ["jdoe", "tab\\x09here"]
    assert found["jdoe"].error is None and found["jdoe"].attributes["path"] == f"jdoe{space}2024.jpg"
    error = found["tab\\x09here"].error
    assert error is not None and error.name == "invalid-file-name"


def test_a_jpeg_saved_as_jfif_is_read_as_the_jpeg_it_is(tmp_path: Path) -> None:
    """Found in the photo-folder bad-day pass: Windows saves a JPEG from a browser as '.jfif' (and some tools
    write '.jpe'); HR's 'ann.jfif' was skipped in silence, and ann had no photo with nothing said."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "ann.jfif").write_bytes(photo(1, size=64))
    (folder / "bob.JPE").write_bytes(photo(2, size=64))
    found = by_anchor(run_import(connector(tmp_path, folder))[0])
    assert sorted(found) == ["ann", "bob"] and all(entry.error is None for entry in found.values())
