"""A SQLite store on a volume that fills up (a real tmpfs, see ``tests/harness/tiny_disk.py``): the run
stops naming the file and saying that space is needed (exit 4), and once space is freed the next run
goes on from what was committed; nothing is left that a later run takes for damage."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli._configs import generated_pair
from tests.harness.crash import mvsync_command
from tests.harness.tiny_disk import TinyDisk, tiny_disk


def _config(tmp_path: Path, volume: Path, count: int, photo_bytes: int = 16) -> Path:
    """A configuration beside the volume whose store is ``volume/store.db``."""
    config = tmp_path / "conf" / "mvsync.toml"
    config.parent.mkdir(exist_ok=True)
    text = generated_pair(count).replace("sqlite:///store.db", f"sqlite:///{(volume / 'store.db').as_posix()}")
    config.write_text(text.replace("photo_bytes = 16", f"photo_bytes = {photo_bytes}"))
    return config


def _mvsync(disk: TinyDisk, *args: str) -> tuple[int, str]:
    """The real CLI run where the volume is mounted: its exit code and stderr."""
    done = disk.run(*mvsync_command(), *args)
    return done.returncode, done.stderr


def test_a_first_run_on_a_full_disk_leaves_no_empty_store_that_the_next_run_takes_for_a_truncated_one(
    tmp_path: Path,
) -> None:
    """Found: the first run on a full volume stopped with "the disk is full" (exit 4) but left the 0-byte
    file SQLite had created, and once space was freed every run refused it: "the store is empty (0
    bytes): it was truncated ...; restore it from a backup", of a store that never held anything. The
    run that created the file now removes it when it could write nothing into it."""
    volume = tmp_path / "volume"
    with tiny_disk(volume, size_kib=2048) as disk:
        config = _config(tmp_path, volume, 3)
        disk.fill()
        code, err = _mvsync(disk, "run", "cycle", "-c", str(config))
        assert code == 4 and "Traceback" not in err, err
        assert f"the store {volume / 'store.db'} cannot grow: the disk is full" in err and "free space" in err
        assert "store.db" not in disk.sizes()  # nothing a later run could take for a truncated store
        disk.free()
        code, err = _mvsync(disk, "run", "cycle", "-c", str(config))
        assert code == 0, err


def test_a_disk_that_fills_during_a_run_stops_it_and_the_next_run_goes_on_once_space_is_freed(tmp_path: Path) -> None:
    """The run meets the full volume at some write of its import (which one depends on the page sizes),
    stops with exit 4 naming the file, and the store stays consistent: after space is freed the same
    run succeeds and ``mvsync doctor`` finds nothing wrong."""
    volume = tmp_path / "volume"
    with tiny_disk(volume, size_kib=2048) as disk:
        assert _mvsync(disk, "run", "cycle", "-c", str(_config(tmp_path, volume, 3)))[0] == 0
        bigger = _config(tmp_path, volume, 150, photo_bytes=4000)  # needs well over the room left
        disk.fill(leave_bytes=128 * 1024)
        code, err = _mvsync(disk, "run", "cycle", "-c", str(bigger))
        assert code == 4 and "Traceback" not in err, err
        assert f"the store {volume / 'store.db'} cannot grow: the disk is full" in err
        assert "full-import: stopped-store-error" in err  # met inside a step, not before the run began
        disk.free()
        code, err = _mvsync(disk, "run", "cycle", "-c", str(bigger))
        assert code == 0, err
        done = disk.run(*mvsync_command(), "doctor", "--no-connect", "--json", "-c", str(bigger))
        assert done.returncode == 0, done.stdout
        assert [f["check"] for f in json.loads(done.stdout)["findings"] if f["severity"] != "ok"] == []
