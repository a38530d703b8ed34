"""A SQLite store on a volume that fills up or turns read-only (a real tmpfs, see
``tests/harness/tiny_disk.py``): the run stops naming the file and what is needed (space, a read-write
mount; exit 4), and once it is given the next run goes on from what was committed; nothing is left
that a later run takes for damage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("room_kib", [48, 16])
def test_a_first_run_with_room_for_the_files_first_page_but_not_its_tables_leaves_no_store_file(
    tmp_path: Path, room_kib: int
) -> None:
    """Found: with room for the first page SQLite writes when it switches the new file to WAL (4096 bytes)
    but not for the tables, the first run stopped with exit 4 ("the disk is full", or at 16 KiB "disk I/O
    error" as the -shm could not grow) and left that table-less file (with an empty -wal and a -shm at 16
    KiB), although the README says such a run leaves no store file; `mvsync doctor` then ended in a
    traceback ("no such table: cs_object"). The run now removes what it created and could write no table into."""
    volume = tmp_path / "volume"
    with tiny_disk(volume, size_kib=2048) as disk:
        config = _config(tmp_path, volume, 3)
        disk.fill(leave_bytes=room_kib * 1024)
        code, err = _mvsync(disk, "run", "cycle", "-c", str(config))
        assert code == 4 and "Traceback" not in err and str(volume / "store.db") in err, err
        assert not [name for name in disk.sizes() if name.startswith("store.db")], disk.sizes()
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


def test_a_store_on_a_volume_mounted_read_only_names_the_mount_not_the_accounts_rights(tmp_path: Path) -> None:
    """Found: with the store's volume mounted read-only (a remount after disk errors, read-only media),
    every command said "this account may not write the folder ...: give it write access to that folder,
    or run mvsync as the account that runs the sync", sending the operator to permissions that were
    fine. Now it names the read-only mount and says to remount it read-write."""
    volume = tmp_path / "volume"
    with tiny_disk(volume, size_kib=2048) as disk:
        config = _config(tmp_path, volume, 3)
        assert _mvsync(disk, "run", "cycle", "-c", str(config))[0] == 0
        assert disk.run("mount", "-o", "remount,ro", str(volume)).returncode == 0
        for args in (("history", "list"), ("run", "cycle")):
            code, err = _mvsync(disk, *args, "-c", str(config))
            assert code == 4 and "Traceback" not in err, err
            assert f"the folder of the store {volume / 'store.db'} is on a file system mounted read-only" in err
            assert f"on {volume}" in err and "remount it read-write" in err and "give it write access" not in err
        assert disk.run("mount", "-o", "remount,rw", str(volume)).returncode == 0
        assert _mvsync(disk, "run", "cycle", "-c", str(config))[0] == 0


def test_a_backup_onto_a_full_volume_says_how_much_room_it_needs_and_leaves_nothing(tmp_path: Path) -> None:
    """Found: `mvsync store backup` onto a volume without room for the copy stopped with "cannot write the
    backup PATH: database or disk is full" (exit 4): SQLite's words, not what to do. Now it says the
    volume is full and how much room the copy needs (the store's size), and leaves no partial file."""
    config = tmp_path / "mvsync.toml"
    config.write_text(generated_pair(300).replace("photo_bytes = 16", "photo_bytes = 2000"))
    volume = tmp_path / "volume"
    with tiny_disk(volume, size_kib=256) as disk:
        assert _mvsync(disk, "run", "cycle", "-c", str(config))[0] == 0  # the store is beside the configuration
        size_mb = (tmp_path / "store.db").stat().st_size / 1048576
        code, err = _mvsync(disk, "store", "backup", str(volume / "backup.db"), "-c", str(config))
        assert code == 4 and "Traceback" not in err, err
        assert f"cannot write the backup {volume / 'backup.db'}: its volume is full" in err, err
        assert f"needs about {size_mb:.1f} MB (the store's size)" in err
        assert "free space there, or choose another volume" in err
        assert disk.sizes() == {}  # no partial copy, no -wal or -shm of one


def _store_and_backup(tmp_path: Path, disk: TinyDisk) -> tuple[Path, Path]:
    """A configuration whose store on the volume holds one run, and a backup of it beside the volume."""
    config = _config(tmp_path, disk.folder, 3)
    backup = tmp_path / "backup.db"
    assert _mvsync(disk, "run", "cycle", "-c", str(config))[0] == 0
    assert _mvsync(disk, "store", "backup", str(backup), "-c", str(config))[0] == 0
    return config, backup


def _restore(disk: TinyDisk, config: Path, backup: Path) -> tuple[int, str]:
    return _mvsync(disk, "store", "restore", str(backup), "-c", str(config))


def test_a_restore_onto_a_full_volume_says_how_much_room_it_needs_and_leaves_the_store_as_it_was(
    tmp_path: Path,
) -> None:
    """`mvsync store restore` writes its copy beside the store before it touches the store: on a volume
    without room for it, it stops (exit 4) saying the volume is full and how much room the copy needs
    (the backup's size), and the store, its folder and the volume are as they were."""
    volume = tmp_path / "volume"
    with tiny_disk(volume, size_kib=2048) as disk:
        config, backup = _store_and_backup(tmp_path, disk)
        disk.fill(leave_bytes=16 * 1024)
        before = disk.sizes()
        code, err = _restore(disk, config, backup)
        assert code == 4 and "Traceback" not in err, err
        assert f"cannot restore {backup} over {volume / 'store.db'}: the volume of {volume} is full" in err, err
        size_mb = backup.stat().st_size / 1048576
        assert f"needs about {size_mb:.1f} MB there (the backup's size)" in err
        assert "the store was left as it was" in err
        assert disk.sizes() == before  # no unfinished copy, the store and its files untouched
        disk.free()
        code, err = _restore(disk, config, backup)
        assert code == 0, err


def test_a_restore_into_a_folder_it_cannot_write_says_so_and_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    """The store's folder on a volume mounted read-only: exit 4 naming the lock folder beside the store (the
    first thing a restore writes) and why, nothing changed."""
    volume = tmp_path / "volume"
    with tiny_disk(volume, size_kib=2048) as disk:
        config, backup = _store_and_backup(tmp_path, disk)
        before = disk.sizes()
        assert disk.run("mount", "-o", "remount,ro", str(volume)).returncode == 0
        code, err = _restore(disk, config, backup)
        assert code == 4 and "Traceback" not in err, err
        assert f"cannot take the run lock {volume / 'store.db.locks'}" in err and "(Read-only file system)" in err, err
        assert "the store was left as it was" in err
        assert disk.sizes() == before
