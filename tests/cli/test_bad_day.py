"""Issue 16 through the real CLI: a configuration error is recorded before any step runs, per-object
errors name the person and lead to the object, and the small traps (unknown names, empty JSON,
dry-run ids, 80-column tables) are gone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from connector.engine import Engine
from connector.metrics import REGISTRY
from tests.cli._configs import MEM_AGENT, generated_pair, invoke, with_directory
from tests.harness.crash import mvsync_command
from tests.imaging.images import photo

MEM = (
    MEM_AGENT
    + """
[run_profiles.mem-cycle]
steps = [{ type = "full-import", agent = "mem" }, { type = "full-sync", agent = "mem" }]
"""
)


@pytest.fixture
def config(tmp_path: Path, mem: dict[str, Any]) -> Path:
    return with_directory(tmp_path, mem, generated_pair(5) + MEM)


# ------------------------------------------------------------------- configuration before the first step
def test_a_configuration_error_is_recorded_before_any_step_runs_and_exits_2(tmp_path: Path) -> None:
    """The third step's agent needs an unset variable: nothing runs, the run is in history with a
    configuration status and the very message the CLI printed, and Prometheus counts a refusal."""
    config = tmp_path / "mvsync.toml"
    config.write_text(
        generated_pair(5).replace(
            "settings = { count = 5, seed = 3, photo_bytes = 0 }",
            'settings = { count = { env = "MVSYNC_TEST_NEVER_SET" }, seed = 3, photo_bytes = 0 }',
        )
    )
    prom = tmp_path / "mvsync.prom"
    # the CLI runs in this process, whose metrics other tests counted into too (a refused "cycle" of
    # tests/cli/test_json_failures.py, when the two share a worker): the file holds this process's total
    refused = {"profile": "cycle", "status": "stopped-configuration"}
    before = REGISTRY.get_sample_value("mvsync_runs_refused_total", refused) or 0.0
    code, _, err = invoke("--metrics-textfile", str(prom), "run", "cycle", "-c", str(config))
    assert code == 2
    printed = err.removeprefix("error: ").strip()
    assert "agents.tgt.settings.count: environment variable MVSYNC_TEST_NEVER_SET is not set" in printed

    code, out, _ = invoke("history", "list", "-c", str(config), "--json")
    [run] = json.loads(out)
    assert run["status"] == "stopped-configuration" and run["message"] == printed
    code, out, _ = invoke("history", "show", str(run["run_id"]), "-c", str(config), "--json")
    shown = json.loads(out)
    assert shown["steps"] == [] and shown["message"] == printed  # no step ran, not even src's import
    metrics = prom.read_text()
    assert f'mvsync_runs_refused_total{{profile="cycle",status="stopped-configuration"}} {before + 1}' in metrics
    # (the registry is the process's: other tests' agents may have series of their own)
    assert not [line for line in metrics.splitlines() if "stopped-interrupted" in line and 'agent="src"' in line]
    assert not [line for line in metrics.splitlines() if "stopped-interrupted" in line and 'agent="tgt"' in line]


def _folder_config(tmp_path: Path) -> tuple[Path, Path]:
    """A photo-folder agent and a one-step profile ``import``; the folder is not created."""
    config = tmp_path / "mvsync.toml"
    folder = tmp_path / "photos"
    config.write_text(
        f"""
[store]
url = "sqlite:///{(tmp_path / "mvsync.db").as_posix()}"
[metaverse]
schema = "person"
[agents.hr]
type = "photo-folder"
settings = {{ path = "{folder.as_posix()}" }}
projection = [{{ object_class = "photoFile" }}]
import_flow = [{{ object_class = "photoFile", cs = "accountName", mv = "accountName" }}]
[run_profiles.import]
steps = [{{ type = "full-import", agent = "hr" }}]
"""
    )
    return config, folder


def _last_run(config: Path) -> dict[str, Any]:
    run = json.loads(invoke("history", "list", "-c", str(config), "--json")[1])[0]
    shown = json.loads(invoke("history", "show", str(run["run_id"]), "-c", str(config), "--json")[1])
    return {**run, "steps": shown["steps"]}


def test_a_missing_input_folder_is_refused_before_the_first_step(tmp_path: Path) -> None:
    """The photo folder is an input (``MUST_EXIST``), not an output still to be created: a run is
    refused before any step, naming the setting, and doctor reports it."""
    config, folder = _folder_config(tmp_path)
    code, _, err = invoke("run", "import", "-c", str(config))
    assert code == 2
    assert f"agents.hr.settings.path: {folder} does not exist or cannot be reached" in err
    assert _last_run(config)["steps"] == []
    code, out, _ = invoke("doctor", "-c", str(config), "--json")
    [finding] = [f for f in json.loads(out)["findings"] if f["check"] == "agents.hr.settings.path"]
    assert finding["severity"] == "error" and str(folder) in finding["message"]


def test_an_empty_environment_variable_is_refused_like_an_unset_one(tmp_path: Path) -> None:
    """Found in the ops pass: a variable set but empty (``MVSYNC_HR_PHOTO_DIR=`` in an EnvironmentFile)
    was taken as the value: the photo folder became the configuration's own folder, imported with
    'success' and exit 0; an empty store.url was 'not a database URL', without the variable's name."""
    config, folder = _folder_config(tmp_path)
    folder.mkdir()
    text = config.read_text()
    config.write_text(text.replace(f'path = "{folder.as_posix()}"', 'path = { env = "MVSYNC_TEST_EMPTY" }'))
    for value in ("", "  "):
        code, _, err = invoke("run", "import", "-c", str(config), env={"MVSYNC_TEST_EMPTY": value})
        assert code == 2, err
        said = "agents.hr.settings.path: environment variable MVSYNC_TEST_EMPTY is set but empty"
        assert said in err and "give it its value, or use { file = ... }" in err
        run = _last_run(config)
        assert run["status"] == "stopped-configuration" and said in run["message"] and run["steps"] == []

    store = f'"sqlite:///{(tmp_path / "mvsync.db").as_posix()}"'
    config.write_text(text.replace(store, '{ env = "MVSYNC_TEST_EMPTY" }'))
    code, out, err = invoke("run", "import", "-c", str(config), "--json", env={"MVSYNC_TEST_EMPTY": ""})
    assert code == 2, err
    assert "store.url: environment variable MVSYNC_TEST_EMPTY is set but empty" in json.loads(out)["message"]


def test_a_configuration_error_a_step_finds_is_recorded_as_such_not_as_an_interruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A photo folder that is gone when its step opens it (a share dropped after the run's check):
    the step and the run say ``stopped-configuration`` with the setting's message, exit 2, instead
    of an interruption with no message."""
    config, folder = _folder_config(tmp_path)
    monkeypatch.setattr(Engine, "check_run", lambda _self, _steps: None)  # the folder was there then
    code, _, err = invoke("run", "import", "-c", str(config))
    assert code == 2
    printed = err.strip().splitlines()[-1].removeprefix("error: ")
    assert str(folder) in printed and "not a folder" in printed

    run = _last_run(config)
    assert run["status"] == "stopped-configuration" and run["message"] == printed
    [step] = run["steps"]
    assert step["status"] == "stopped-configuration" and step["message"] == printed


def test_a_photo_folder_emptied_under_a_delta_import_deletes_nothing(tmp_path: Path) -> None:
    """Found in a bad-day pass: a share that is not mounted leaves its mount point, an empty folder,
    and a delta import read that as every photo removed (``deletes=5``, ``success``; the next export
    clears the thumbnails written from them). A full import met the engine's empty-import guard, a
    delta did not: it now stops the same way, naming the folder, and deletes nothing."""
    config, folder = _folder_config(tmp_path)
    with config.open("a", encoding="utf-8") as toml:
        toml.write('[run_profiles.delta]\nsteps = [{ type = "delta-import", agent = "hr" }]\n')
    folder.mkdir()
    for name in ("ann", "bob", "cid", "dee", "eve"):
        (folder / f"{name}.jpg").write_bytes(photo(len(name) + ord(name[0]), size=64))
    assert invoke("run", "import", "-c", str(config))[0] == 0
    folder.rename(tmp_path / "share")  # the share goes away; its mount point stays, empty
    folder.mkdir()

    code, out, err = invoke("run", "delta", "-c", str(config))
    assert code == 4, (out, err)
    [step] = _last_run(config)["steps"]
    assert step["status"] == "stopped-empty-import"
    assert f"the photo folder {folder} holds no photos now, but 5 account(s)" in step["message"]
    assert "Nothing was marked deleted" in step["message"] and "--allow-empty-import" in step["message"]
    assert len(_objects(config)) == 5

    folder.rmdir()
    (tmp_path / "share").rename(folder)  # mounted again: nothing to do
    assert invoke("run", "delta", "-c", str(config))[0] == 0
    assert _last_run(config)["steps"][0]["counters"].get("deletes", 0) == 0

    for file in folder.iterdir():  # removed on purpose: the way out the message names
        file.unlink()
    assert invoke("run", "delta", "-c", str(config))[0] == 4
    assert invoke("run", "import", "-c", str(config), "--allow-empty-import")[0] == 0
    assert _objects(config) == []  # staged, never synchronized: they simply go
    assert invoke("run", "delta", "-c", str(config))[0] == 0


def test_a_sub_folder_emptied_under_a_delta_import_deletes_nothing(tmp_path: Path) -> None:
    """Found in the photo-folder pass: a recursive folder whose sub-folder is a site's share. Unmounted,
    the share leaves its mount point, an empty sub-folder, and a delta import deleted every photo it had
    held (``deletes=2``, ``success``); the whole-folder guard saw the other sites' photos. A sub-folder
    that held photos and is now empty stops the step the same way, naming it, and deletes nothing; one
    removed (or left holding other files) was emptied on purpose."""
    config, folder = _folder_config(tmp_path)
    where = f'path = "{folder.as_posix()}"'
    text = config.read_text().replace(where, f"{where}, recursive = true")
    config.write_text(text + '[run_profiles.delta]\nsteps = [{ type = "delta-import", agent = "hr" }]\n')
    for site, names in (("site-a", ("ann", "bob")), ("site-b", ("cid", "dee"))):
        (folder / site).mkdir(parents=True)
        for name in names:
            (folder / site / f"{name}.jpg").write_bytes(photo(len(name) + ord(name[0]), size=64))
    assert invoke("run", "import", "-c", str(config))[0] == 0
    (folder / "site-b").rename(tmp_path / "share-b")  # site B's share goes away; its mount point stays
    (folder / "site-b").mkdir()

    code, out, err = invoke("run", "delta", "-c", str(config))
    assert code == 4, (out, err)
    [step] = _last_run(config)["steps"]
    assert step["status"] == "stopped-empty-import"
    assert "are empty now but held photos at the last import: 'site-b' (2 account(s))" in step["message"]
    assert "Nothing was marked deleted" in step["message"] and len(_objects(config)) == 4

    (folder / "site-b").rmdir()
    (tmp_path / "share-b").rename(folder / "site-b")  # mounted again: nothing to do
    assert invoke("run", "delta", "-c", str(config))[0] == 0
    assert _last_run(config)["steps"][0]["counters"].get("deletes", 0) == 0

    for file in (folder / "site-b").iterdir():  # removed on purpose, with a note left in the folder
        file.unlink()
    (folder / "site-b" / "moved.txt").write_text("site B's photos moved to site-a", encoding="utf-8")
    assert invoke("run", "delta", "-c", str(config))[0] == 0
    assert _last_run(config)["steps"][0]["counters"]["deletes"] == 2


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ('export_path = "{folder}"', "is the folder"),
        ('export_path = "{folder}/backup", recursive = true', "lies inside"),
    ],
)
def test_an_export_path_inside_the_imported_folder_is_refused(tmp_path: Path, extra: str, where: str) -> None:
    """Found in a bad-day pass: with export_path = path, the backup export wrote 'user1 648x648.jpg'
    beside 'user1.jpg' and the next import reported duplicate-account for user1; for a person without an
    HR file, the backup of a photo from another source would have become an HR photo that outlives it."""
    config, folder = _folder_config(tmp_path)
    folder.mkdir()
    text = config.read_text(encoding="utf-8")
    setting = f'path = "{folder.as_posix()}"'
    config.write_text(text.replace(setting, f"{setting}, {extra.format(folder=folder.as_posix())}"), encoding="utf-8")
    code, _, err = invoke("run", "import", "-c", str(config))
    assert code == 2, err
    assert f"agents.hr.settings: export_path {where}" in err and "this agent imports" in err, err
    assert "choose a folder outside it" in err


def _cli_without_root_reads(*args: str) -> tuple[int, str]:
    """The CLI in a subprocess that file permissions bind (as root: without the capabilities that bypass them)."""
    cli = [sys.executable, "-c", "from connector.cli import main; main()", *args]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("as root, needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
        dropped = "-dac_override,-dac_read_search"
        cli = [setpriv, f"--inh-caps={dropped}", f"--bounding-set={dropped}", *cli]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"})
    return done.returncode, done.stdout + done.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="chmod 000 does not make a file unreadable on Windows")
def test_a_photo_that_could_not_be_read_is_read_again_once_it_can_be(tmp_path: Path) -> None:
    """Found in a bad-day pass: a photo the import could not open (permission denied; on Windows a file
    an antivirus or HR tool holds locked; an I/O error of a share) was remembered with its error in the
    watermark, and since fixing that changes neither the file's size nor its time, every delta import
    repeated "Permission denied" without trying again, until a full import."""
    config, folder = _folder_config(tmp_path)
    with config.open("a", encoding="utf-8") as toml:
        toml.write('[run_profiles.delta]\nsteps = [{ type = "delta-import", agent = "hr" }]\n')
    folder.mkdir()
    (folder / "ann.jpg").write_bytes(photo(1, size=64))
    (folder / "bob.jpg").write_bytes(photo(2, size=64))
    (folder / "bob.jpg").chmod(0)
    code, out = _cli_without_root_reads("run", "import", "-c", str(config))
    assert code == 3 and "file-unreadable" in out and "bob.jpg: Permission denied" in out, out

    (folder / "bob.jpg").chmod(0o644)  # the administrator fixes the permission
    code, out = _cli_without_root_reads("run", "delta", "-c", str(config))
    assert code == 0, out
    [step] = _last_run(config)["steps"]
    assert step["status"] == "success" and step["counters"].get("adds") == 1, step
    assert [o["anchor"] for o in _objects(config)] == ["ann", "bob"]


def _objects(config: Path) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = json.loads(invoke("cs", "search", "hr", "-c", str(config), "--json")[1])
    return objects


def test_a_run_lock_that_cannot_be_taken_is_a_store_error_naming_the_path_not_a_traceback(tmp_path: Path) -> None:
    """Something in the way of the lock folder beside the store (a file of its name; on Windows, a folder
    another account created): exit 4 with a message naming the path and what to check, recorded in
    history as a store error."""
    config, folder = _folder_config(tmp_path)
    folder.mkdir()
    assert invoke("run", "import", "-c", str(config))[0] == 0
    locks = tmp_path / "mvsync.db.locks"
    for child in locks.iterdir():
        child.unlink()
    locks.rmdir()
    locks.write_text("in the way")
    code, _, err = invoke("run", "import", "-c", str(config))
    assert code == 4, err
    printed = err.strip().splitlines()[-1].removeprefix("error: ")
    assert printed.startswith("cannot take the run lock") and str(locks) in printed and "permissions" in printed
    run = _last_run(config)
    assert run["status"] == "stopped-store-error" and run["message"] == printed and run["steps"] == []


def test_every_path_an_agent_names_is_checked_before_the_first_step(tmp_path: Path) -> None:
    config = tmp_path / "mvsync.toml"
    missing = tmp_path / "nowhere" / "ca.pem"
    config.write_text(
        generated_pair(3)
        + f"""
[agents.ad]
type = "active-directory"
[agents.ad.settings]
host = "dc.invalid"
base_dns = ["DC=x"]
bind_dn = "CN=a"
password = {{ env = "HOME" }}
ca_file = "{missing}"
[run_profiles.with-ad]
steps = [{{ type = "full-import", agent = "src" }}, {{ type = "full-import", agent = "ad" }}]
"""
    )
    code, _, err = invoke("run", "with-ad", "-c", str(config))
    assert code == 2 and f"agents.ad.settings.ca_file: cannot read {missing}" in err
    code, out, _ = invoke("history", "show", "1", "-c", str(config), "--json")
    assert json.loads(out)["steps"] == []


def test_a_dry_run_with_a_configuration_error_leaves_no_history(tmp_path: Path) -> None:
    config = tmp_path / "mvsync.toml"
    config.write_text(generated_pair(3).replace("count = 3, seed", 'count = { env = "MVSYNC_TEST_NEVER_SET" }, seed'))
    assert invoke("run", "cycle", "-c", str(config), "--dry-run")[0] == 2
    code, out, _ = invoke("history", "list", "-c", str(config), "--json")
    assert code == 2 and "there is no store" in out  # no history, and no store: a dry run creates none


# ------------------------------------------------------------------------ errors carry the person
def test_per_object_errors_carry_the_person_in_history_table_and_cs(config: Path, mem: dict[str, Any]) -> None:
    mem["objects"].update(
        {
            "0a1b-graph-id": {"accountName": "ada@contoso.test", "displayName": "Ada Lovelace"},
            "ok-id": {"accountName": "alan@contoso.test", "displayName": "Alan Turing"},
        }
    )
    mem["errors"]["0a1b-graph-id"] = ("mailbox-not-in-exchange-online", "404 MailboxNotHostedInExchangeOnline")
    code, out, _ = invoke("run", "mem-cycle", "-c", str(config))
    assert code == 3
    assert "mailbox-not-in-exchange-online 0a1b-graph-id (Ada Lovelace (ada@contoso.test))" in out

    code, out, _ = invoke("history", "show", "1", "-c", str(config), "--json")
    [error] = json.loads(out)["steps"][0]["errors"]
    assert error["anchor"] == "0a1b-graph-id" and error["display"] == "Ada Lovelace (ada@contoso.test)"
    code, out, _ = invoke("history", "show", "1", "-c", str(config))
    assert "[error] mailbox-not-in-exchange-online 0a1b-graph-id (Ada Lovelace (ada@contoso.test))" in out

    # the id the error names leads to the object: cs show and cs search --errors
    code, out, _ = invoke("cs", "show", "mem", "0a1b-graph-id", "-c", str(config))
    assert code == 0, out
    assert "Ada Lovelace" in out and "mailbox-not-in-exchange-online" in out and "not in the connector space" in out
    code, out, _ = invoke("cs", "show", "mem", "0a1b-graph-id", "-c", str(config), "--json")
    assert json.loads(out)["import_error"]["name"] == "mailbox-not-in-exchange-online"
    code, out, _ = invoke("cs", "search", "mem", "--errors", "-c", str(config), "--json")
    assert [(d["anchor"], d["display"]) for d in json.loads(out)] == [
        ("0a1b-graph-id", "Ada Lovelace (ada@contoso.test)")
    ]
    code, out, _ = invoke("cs", "search", "mem", "-c", str(config))
    assert "Alan Turing (alan@contoso.test)" in out  # staged objects show the person too

    # once the object can be read, it is staged and no longer listed as failing
    mem["errors"].clear()
    assert invoke("run", "mem-cycle", "-c", str(config))[0] == 0
    code, out, _ = invoke("cs", "search", "mem", "--errors", "-c", str(config), "--json")
    assert json.loads(out) == []
    code, out, _ = invoke("cs", "show", "mem", "0a1b-graph-id", "-c", str(config), "--json")
    assert json.loads(out)["display"] == "Ada Lovelace (ada@contoso.test)"


def test_run_json_names_the_people_of_its_per_object_errors(config: Path, mem: dict[str, Any]) -> None:
    """`mvsync run --json` (the cron line's cycle.jsonl) gave each step's error count only: who failed,
    and why, took a second command. It now carries the first errors as the text output shows them."""
    people = {f"id-{n:02d}": {"accountName": f"p{n}@contoso.test", "displayName": f"Person {n}"} for n in range(12)}
    mem["objects"].update(people)
    for anchor in people:
        mem["errors"][anchor] = ("mailbox-not-found", f"EWS has no mailbox for {anchor}")
    code, out, _ = invoke("run", "mem-cycle", "-c", str(config), "--json")
    step = json.loads(out)["steps"][0]
    assert code == 3 and step["errors"] == 12
    assert len(step["object_errors"]) == 10  # as many as the text shows; all: mvsync history show
    first = step["object_errors"][0]
    assert first["anchor"] == "id-00" and first["display"] == "Person 0 (p0@contoso.test)"
    assert first["error_name"] == "mailbox-not-found" and first["detail"] == "EWS has no mailbox for id-00"
    assert json.loads(invoke("run", "mem-cycle", "-c", str(config), "--json", "--dry-run")[1])["steps"][0][
        "object_errors"
    ][0]["display"] == ("Person 0 (p0@contoso.test)")


def test_export_errors_name_the_person_from_the_connector_space(tmp_path: Path) -> None:
    from connector.sdk import ExportStatus
    from tests.engine.conftest import World, add_users

    world = World(tmp_path)
    try:
        add_users(world, 3)
        world.cycle()
        world.ad["fail"]["guid-001"] = (ExportStatus.FAILED, "permission-issue")
        result = world.run("export")
        assert result.status == "completed-export-errors"
        [error] = result.steps[0].errors
        assert error.anchor == "guid-001" and error.display == "User 1 (user001)"
        with world.engine.store.read() as conn:
            stored = conn.exec_driver_sql("SELECT display, cs_id FROM run_error").one()
        assert stored.display == "User 1 (user001)" and stored.cs_id is not None
    finally:
        world.close()


# -------------------------------------------------------------------------------- small traps
@pytest.mark.parametrize(
    "args",
    [
        ("pending-exports", "nosuch"),
        ("cs", "search", "nosuch"),
        ("cs", "show", "nosuch", "x"),
        ("schema", "nosuch"),
        ("auth", "status", "nosuch"),
        ("run", "nosuch"),
        ("run", "cycle", "--agent", "nosuch"),
    ],
)
def test_unknown_agent_or_profile_exits_2_everywhere(config: Path, args: tuple[str, ...]) -> None:
    assert invoke("run", "cycle", "-c", str(config))[0] == 0
    code, out, err = invoke(*args, "-c", str(config))
    assert code == 2, (args, out, err)
    assert "nosuch" in err and "0 pending" not in out
    if args[0] == "run" and "--agent" in args:  # not "has no steps for nosuch": it is no agent at all
        assert "unknown agent(s) nosuch (configured agents: " in err


def test_empty_json_lists_print_brackets(config: Path) -> None:
    assert invoke("run", "cycle", "-c", str(config))[0] == 0
    for args in (
        ("pending-exports", "src", "--format", "json"),
        ("pending-exports", "src", "--json"),
        ("cs", "search", "src", "--errors", "--json"),
        ("mv", "search", "nobody-is-called-this", "--json"),
    ):
        code, out, _ = invoke(*args, "-c", str(config))
        assert (code, out) == (0, "[]\n"), args


def test_dry_run_ids_are_absent_not_invented(config: Path) -> None:
    assert invoke("run", "cycle", "-c", str(config))[0] == 0
    code, out, _ = invoke("run", "cycle", "-c", str(config), "--dry-run", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["dry_run"] is True
    assert doc["run_id"] is None and all(s["step_id"] is None for s in doc["steps"])
    code, out, _ = invoke("history", "list", "-c", str(config), "--json")
    assert [r["run_id"] for r in json.loads(out)] == [1]


def test_tables_off_a_terminal_are_full_width(config: Path) -> None:
    """Through a pipe, as from cron: nothing is folded or cut at 80 columns."""
    assert invoke("run", "cycle", "-c", str(config))[0] == 0
    done = subprocess.run(
        [sys.executable, "-c", "from connector.cli import main; main()", "cs", "search", "src", "-c", str(config)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},  # no COLUMNS, no terminal
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if "u0000001" in line]
    assert len(rows) == 1 and "…" not in rows[0]  # one row, not folded or truncated
    assert max(len(line) for line in done.stdout.splitlines()) > 80


#: A device every write to fails with ENOSPC (Linux): a full disk under the scheduler's ``>> cycle.jsonl``.
FULL_DEVICE = Path("/dev/full")


@pytest.mark.skipif(not FULL_DEVICE.exists(), reason="needs /dev/full, a device whose every write fails (Linux)")
@pytest.mark.parametrize("full", ["stdout", "stderr"])
def test_a_full_disk_under_stdout_or_stderr_keeps_the_commands_exit_code(tmp_path: Path, full: str) -> None:
    """Found in the ops pass: with the disk of cron's ``--json >> cycle.jsonl`` full, a run that had done
    its work ended in an OSError traceback and exit 1 (a bug, per the README) instead of its own exit
    code, which is what the scheduler alerts on; a full stderr turned a configuration error's exit 2 into 1."""
    config = tmp_path / "mvsync.toml"
    config.write_text(generated_pair(3))
    other = "stderr" if full == "stdout" else "stdout"
    for args, expected, status in ((["run", "cycle"], 0, "success"), (["run", "cycel"], 2, "stopped-configuration")):
        with FULL_DEVICE.open("w") as device:
            done = subprocess.run(
                [*mvsync_command(), *args, "-c", str(config), "--json"],
                **{full: device, other: subprocess.PIPE},
                text=True,
                timeout=120,
                check=False,
            )
        said = done.stderr if full == "stdout" else done.stdout
        assert done.returncode == expected, said
        assert "Traceback" not in said
        if full == "stdout":  # said once, naming where stdout goes
            assert said.count("error: cannot write to the standard output (/dev/full): No space left on device") == 1
        else:  # the result, or the failure object, still reaches stdout
            assert json.loads(said)["status"] == status
    code, out, _ = invoke("history", "list", "-c", str(config), "--json")
    assert code == 0 and [r["status"] for r in json.loads(out)] == ["success"]  # the run did its work


def test_a_negative_wait_is_refused_as_a_usage_error(tmp_path: Path) -> None:
    config, folder = _folder_config(tmp_path)
    folder.mkdir()
    code, _, err = invoke("run", "import", "--wait", "-5", "-c", str(config))
    assert code == 2 and "--wait" in err


def test_configuration_errors_name_keys_as_toml_writes_them_one_line_per_cause(tmp_path: Path) -> None:
    config, _photos = _folder_config(tmp_path)
    good = config.read_text().replace("[run_profiles.import]", '[run_profiles."Full Import (Stage Only)"]')
    cases = {
        # a bad step: pydantic also reports the array that lost it ("too short"); one line, TOML's key
        good.replace('type = "full-import"', 'type = "full-imprt"', 1): [
            'run_profiles."Full Import (Stage Only)".steps[0].type: Input should be'
        ],
        good.replace(', mv = "accountName" }', " }", 1): ["agents.hr.import_flow[0].mv: required, but not given"],
        # a validator's own sentence, without pydantic's "Value error, " or a "(top level)" key
        good.replace('agent = "hr" }]', 'agent = "nobody" }]', 1): ["steps[0].agent: unknown agent 'nobody'"],
    }
    for text, wanted in cases.items():
        config.write_text(text, encoding="utf-8")
        code, _out, err = invoke("run", "Full Import (Stage Only)", "-c", str(config))
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == len(wanted), err
        for line, expected in zip(lines, wanted, strict=True):
            assert line.startswith(f"error: {config}: ") and expected in line, line
            assert "Value error" not in line and "(top level)" not in line and "too short" not in line


@pytest.mark.parametrize(
    ("schema", "wanted"),
    [
        (None, "metaverse.schema: {dir}/my-schema.toml does not exist (a name ending in .toml is your own"),
        ("[object_types]\n", "{dir}/my-schema.toml: a metaverse schema needs at least one [object_types.NAME] table"),
        (
            '[object_types.person]\nattributes = [{ name = "accountName" }, { name = "mail", type = "strng" }]\n',
            "{dir}/my-schema.toml: object_types.person.attributes[1].type: Input should be 'string'",
        ),
        (
            '[object_types.person]\nattributes = "accountName"\n',
            "{dir}/my-schema.toml: object_types.person.attributes: should be an array of { name = ..., type = ... }",
        ),
    ],
)
def test_a_metaverse_schema_file_that_is_missing_or_wrong_is_named_never_replaced_by_the_shipped_one(
    tmp_path: Path, schema: str | None, wanted: str
) -> None:
    # a typo in the path used to mean the shipped schema, silently; an empty one was a traceback
    config, folder = _folder_config(tmp_path)
    folder.mkdir()
    config.write_text(config.read_text().replace('schema = "person"', 'schema = "my-schema.toml"'))
    if schema is not None:
        (tmp_path / "my-schema.toml").write_text(schema, encoding="utf-8")
    code, _out, err = invoke("run", "import", "-c", str(config))
    assert code == 2 and "Traceback" not in err, err
    assert wanted.replace("{dir}", str(tmp_path)) in err


HUGE = str(2**70)


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (("history", "show", HUGE), 2, "Invalid value for 'run_id'"),
        (("history", "list", "--limit", HUGE), 2, "Invalid value for '--limit'"),
        (("history", "list", "--limit", "-3"), 2, "Invalid value for '--limit'"),
        (("cs", "search", "ad", "--limit", HUGE), 2, "Invalid value for '--limit'"),
        (("mv", "search", "a", "--limit", "0"), 2, "Invalid value for '--limit'"),
        (("mv", "show", HUGE), 2, f"no metaverse object '{HUGE}'"),
    ],
)
def test_numbers_beyond_what_the_store_holds_are_usage_errors_not_tracebacks(
    config: Path, args: tuple[str, ...], code: int, said: str
) -> None:
    # SQLite's INTEGER is 64-bit: a larger id or limit was an OverflowError traceback (exit 1)
    assert invoke("run", "cycle", "-c", str(config))[0] in (0, 3)
    got, _out, err = invoke(*args, "-c", str(config))
    assert got == code and said in err and "Traceback" not in err, err


URL_PASSWORDS = """
[store]
url = "sqlite:///store.db"
[agents.exs]
type = "exchange-server-photos"
[agents.exs.settings]
ews_url = "https://CONTOSO%5Csvc:Hunter2Secret@mail.contoso.test/EWS/Exchange.asmx"
username = 'CONTOSO\\svc'
password = { env = "EWS_PASSWORD" }
mailboxes = ["ann@contoso.test"]
[agents.exo]
type = "exchange-online-photos"
[agents.exo.settings]
tenant_id = "t"
client_id = "c"
auth_mode = "app"
client_secret = { env = "EXO_SECRET" }
graph_url = "https://app:GraphPw99@graph.contoso.test/v1.0"
[run_profiles.cycle]
steps = [{ type = "full-import", agent = "exs" }, { type = "full-import", agent = "exo" }]
"""


def test_a_password_written_into_an_agents_url_is_refused_and_said_nowhere(tmp_path: Path) -> None:
    """Found by hand: ``ews_url = "https://DOMAIN%5Csvc:<password>@mail/EWS/..."`` was taken, and the
    URL's origin is in the EWS messages kept in run history and in the throttling limiter's name,
    a Prometheus label (``mvsync_concurrency_limit{limiter="ews:https://...:<password>@mail..."}``)."""
    config = tmp_path / "mvsync.toml"
    config.write_text(URL_PASSWORDS, encoding="utf-8")
    env = {"EWS_PASSWORD": "pw-env", "EXO_SECRET": "secret-env"}
    code, out, err = invoke("run", "cycle", "-c", str(config), "--json", env=env)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2, err
    for key in ("agents.exs.settings.ews_url", "agents.exo.settings.graph_url"):
        [line] = [x for x in lines if key in x]
        assert line.removeprefix("error: ").startswith(f"{config}: {key}: must not hold a user name or password"), line
        assert "{ env = .. }" in line
    _, history, _ = invoke("history", "list", "-c", str(config), "--json")
    for text in (out, err, history):
        assert "Hunter2Secret" not in text and "GraphPw99" not in text
    assert json.loads(history)[0]["status"] == "stopped-configuration"
