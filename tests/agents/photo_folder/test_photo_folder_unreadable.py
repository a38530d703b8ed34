"""photo-folder, through the real CLI, as an account that file permissions bind: a sub-folder the
import cannot list stops the step, deletes nothing, and says what to do."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.cli._configs import invoke
from tests.cli.test_bad_day import _cli_without_root_reads
from tests.imaging.images import photo


@pytest.mark.skipif(sys.platform == "win32", reason="chmod 000 does not make a folder unlistable on Windows")
def test_a_sub_folder_that_cannot_be_listed_stops_the_step_says_what_to_do_and_deletes_nothing(
    tmp_path: Path,
) -> None:
    """Found in a bad-day pass: a sub-folder of a recursive photo folder that the service account may
    not list (HR's new site folder, created with other permissions) stopped the step with "cannot list
    <folder>: Permission denied" only: nothing said that no photo was deleted nor what to change. The
    message now says both; the step still stops (exit 4) and the photos imported before stay."""
    folder = tmp_path / "photos"
    (folder / "site-b").mkdir(parents=True)
    (folder / "ann.jpg").write_bytes(photo(1, size=64))
    (folder / "site-b" / "bob.jpg").write_bytes(photo(2, size=64))
    config = tmp_path / "mvsync.toml"
    config.write_text(
        f"""
[store]
url = "sqlite:///{(tmp_path / "mvsync.db").as_posix()}"
[agents.hr]
type = "photo-folder"
settings = {{ path = "{folder.as_posix()}", recursive = true }}
projection = [{{ object_class = "photoFile" }}]
import_flow = [{{ object_class = "photoFile", cs = "accountName", mv = "accountName" }}]
[run_profiles.delta]
steps = [{{ type = "delta-import", agent = "hr" }}]
[run_profiles.full]
steps = [{{ type = "full-import", agent = "hr" }}]
""",
        encoding="utf-8",
    )
    assert _cli_without_root_reads("run", "full", "-c", str(config))[0] == 0
    (folder / "site-b").chmod(0)
    try:
        for profile in ("delta", "full"):
            code, out = _cli_without_root_reads("run", profile, "-c", str(config), "--json")
            assert code == 4, out
            [step] = json.JSONDecoder().raw_decode(out)[0]["steps"]  # stdout's JSON, then stderr
            said = step["message"]
            assert said.startswith(f"cannot list {folder / 'site-b'}: Permission denied"), said
            assert "nothing was marked deleted" in said and "read access" in said and "recursive = false" in said
    finally:
        (folder / "site-b").chmod(0o755)
    code, out, _ = invoke("cs", "search", "hr", "-c", str(config), "--json")
    assert sorted(o["anchor"] for o in json.loads(out)) == ["ann", "bob"]
