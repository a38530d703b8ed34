"""A full import that suddenly lists a few of many objects (a permission change, a filter error, a
share half-mounted) is stopped by the import step's deletion threshold before it marks anyone deleted
(the real CLI with a photo folder)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from connector.demo import dump_toml
from tests.agents.photo_folder.helpers import cli_config
from tests.cli._configs import invoke
from tests.imaging.images import photo

PEOPLE = 20


def _config(tmp_path: Path, folder: Path, threshold: dict[str, Any]) -> Path:
    """The CLI's photo-folder agent ``hr`` importing people with their photo; ``full`` is its full import,
    with ``threshold`` as the step's deletion_threshold, then its full synchronization."""
    config = cli_config(tmp_path, folder)
    document = tomllib.loads(config.read_text(encoding="utf-8"))
    document["agents"]["hr"]["import_flow"].append({"object_class": "photoFile", "cs": "photo", "mv": "photo"})
    document["run_profiles"]["full"]["steps"] = [
        {"type": "full-import", "agent": "hr", "deletion_threshold": threshold},
        {"type": "full-sync", "agent": "hr"},
    ]
    config.write_text(dump_toml(document), encoding="utf-8")
    return config


def _imported(tmp_path: Path, threshold: dict[str, Any]) -> tuple[Path, Path]:
    """The configuration and the folder of ``PEOPLE`` photos, imported and synchronized once."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(PEOPLE):
        (folder / f"user{i:02d}.jpg").write_bytes(photo(i, size=32))
    config = _config(tmp_path, folder, threshold)
    assert invoke("run", "full", "-c", str(config))[0] == 0
    return config, folder


def _people(config: Path) -> int:
    code, out, err = invoke("mv", "search", "-c", str(config), "--json")
    assert code == 0, err
    return len(json.loads(out))


def test_a_full_import_that_would_delete_most_people_stops_at_its_deletion_threshold(tmp_path: Path) -> None:
    """Found in a bad-day pass: HR's share came back listing 3 of 20 photos (a permission change). The
    full import staged 17 deletes and the sync removed 17 people from the metaverse: the import step's
    ``deletion_threshold`` was accepted and ignored (only export steps read it). It now stops the full
    import before it marks anyone deleted (exit 4), with the figures and what to do."""
    config, folder = _imported(tmp_path, {"percent": 20})
    assert _people(config) == PEOPLE

    hidden = tmp_path / "hidden"
    hidden.mkdir()
    for i in range(3, PEOPLE):  # what the permission change hides from the service account
        (folder / f"user{i:02d}.jpg").rename(hidden / f"user{i:02d}.jpg")
    code, out, err = invoke("run", "full", "-c", str(config), "--json")
    assert code == 4, (out, err)
    [step] = json.loads(out)["steps"]  # the sync did not run
    assert step["status"] == "stopped-deletion-threshold", step
    message = step["message"]
    assert "the full import of 'hr' did not see 17 of the 20 objects in its connector space (85.0%)" in message
    assert "exceed 20.0%; nothing was marked deleted" in message, message
    assert 'deletion_threshold of the full-import step of "hr"' in message, message
    assert _people(config) == PEOPLE
    code, out, _ = invoke("run", "full", "-c", str(config), "--json")  # again: the same verdict, nothing lost
    assert code == 4 and json.loads(out)["steps"][0]["status"] == "stopped-deletion-threshold"

    for moved in hidden.iterdir():  # the permission is fixed
        moved.rename(folder / moved.name)
    code, out, err = invoke("run", "full", "-c", str(config), "--json")
    assert code == 0, (out, err)
    assert json.loads(out)["steps"][0]["counters"].get("deletes", 0) == 0
    assert _people(config) == PEOPLE


def test_a_full_import_under_its_deletion_threshold_deletes_as_before(tmp_path: Path) -> None:
    config, folder = _imported(tmp_path, {"count": 2})
    (folder / "user00.jpg").unlink()
    (folder / "user01.jpg").unlink()
    code, out, err = invoke("run", "full", "-c", str(config), "--json")
    assert code == 0, (out, err)
    assert json.loads(out)["steps"][0]["counters"]["deletes"] == 2


def test_a_deletion_threshold_on_a_step_that_reads_none_is_refused(tmp_path: Path) -> None:
    """A threshold was accepted on any step and read by exports only: one put on a full import (before
    it was read there) or on a synchronization protected nothing, in silence."""
    config = _config(tmp_path, tmp_path, {"count": 5, "attributes": ["photo"]})
    document = tomllib.loads(config.read_text(encoding="utf-8"))
    document["run_profiles"]["full"]["steps"][1]["deletion_threshold"] = {"count": 5}
    config.write_text(dump_toml(document), encoding="utf-8")
    code, out, _ = invoke("run", "full", "-c", str(config), "--json")
    assert code == 2, out
    message = json.loads(out)["message"]
    first = "steps[0].deletion_threshold.attributes: a full import's threshold counts object deletes only"
    second = "steps[1].deletion_threshold: a full-sync step reads no deletion threshold (export steps and full"
    assert f'run_profiles."full".{first}; remove the attributes' in message, message
    assert f'run_profiles."full".{second} imports do)' in message, message
