"""Mistakes in ``mvsync.toml`` as an identity engineer makes them: a misspelt key, a step naming an
agent that is not there, a path written from the home folder. Each is one line naming the key and
the file, with what it probably should be (exit 2, no step run)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.cli._configs import invoke
from tests.harness.crash import mvsync_command
from tests.imaging.images import photo

GOOD = """
[store]
url = "sqlite:///mvsync.db"
[metaverse]
schema = "person"
[agents.hr]
type = "photo-folder"
settings = { path = "photos" }
projection = [{ object_class = "photoFile" }]
import_flow = [{ object_class = "photoFile", cs = "accountName", mv = "accountName" }]
[run_profiles."Full Import (Stage Only)"]
steps = [{ type = "full-import", agent = "hr", deletion_threshold = { count = 5 } }]
"""


def _refused(tmp_path: Path, text: str) -> list[str]:
    """The ``error:`` lines of a run of ``text`` (which must be refused with exit 2), without the file."""
    config = tmp_path / "mvsync.toml"
    config.write_text(text, encoding="utf-8")
    code, _out, err = invoke("run", "Full Import (Stage Only)", "-c", str(config))
    assert code == 2, err
    return [line.removeprefix("error: ").removeprefix(f"{config}: ") for line in err.strip().splitlines()]


@pytest.mark.parametrize(
    ("typo", "said"),
    [
        (('url = "sqlite', 'urll = "sqlite'), "store.urll: unknown key: did you mean 'url'?"),
        (("projection = [", "projetcion = ["), "agents.hr.projetcion: unknown key: did you mean 'projection'?"),
        (('{ path = "photos" }', '{ paht = "photos" }'), "agents.hr.settings.paht: unknown key: did you mean 'path'?"),
        (
            ('agent = "hr",', 'agnet = "hr",'),
            "run_profiles.\"Full Import (Stage Only)\".steps[0].agnet: unknown key: did you mean 'agent'?",
        ),
        (
            ("{ count = 5 }", "{ cuont = 5 }"),
            'run_profiles."Full Import (Stage Only)".steps[0].deletion_threshold.cuont: unknown key: '
            "did you mean 'count'?",
        ),
        (("[metaverse]\n", "[metaverse]\nschemas = 1\n"), "metaverse.schemas: unknown key: did you mean 'schema'?"),
        (
            ("[metaverse]\n", "[metaverse]\nfrobnicate = 1\n"),
            "metaverse.frobnicate: unknown key (the keys here: schema, precedence, delete_when_disconnected_from)",
        ),
    ],
)
def test_a_misspelt_key_is_named_with_the_key_it_resembles(tmp_path: Path, typo: tuple[str, str], said: str) -> None:
    """Found by hand: `urll = ...` in [store] said only "unknown key (check the spelling; see the
    sample configuration)", leaving the engineer to find the right spelling in a 200-line sample."""
    lines = _refused(tmp_path, GOOD.replace(*typo, 1))
    assert said in lines, lines


def test_a_step_naming_an_unknown_agent_names_the_step_and_the_agent_it_resembles(tmp_path: Path) -> None:
    """Found by hand: "run profile 'Full Import (Stage Only)' names unknown agent 'hrr'", with no key
    (which of the profile's steps?) and no word of the agents there are."""
    lines = _refused(tmp_path, GOOD.replace('agent = "hr",', 'agent = "hrr",', 1))
    assert lines == [
        "run_profiles.\"Full Import (Stage Only)\".steps[0].agent: unknown agent 'hrr': did you mean 'hr'? "
        "(configured agents: hr)"
    ]
    lines = _refused(tmp_path, GOOD.replace('schema = "person"', 'schema = "person"\nprecedence = { photo = ["HR"] }'))
    assert lines == ["metaverse.precedence.photo: unknown agent 'HR': did you mean 'hr'? (configured agents: hr)"]


def test_an_unknown_profile_is_named_with_the_one_it_resembles(tmp_path: Path) -> None:
    config = tmp_path / "mvsync.toml"
    config.write_text(GOOD, encoding="utf-8")
    code, out, _err = invoke("run", "full import (stage only)", "-c", str(config), "--json")
    message = json.loads(out)["message"]
    assert (
        code == 2 and "no run profile 'full import (stage only)': did you mean 'Full Import (Stage Only)'?" in message
    )


def test_a_path_setting_written_from_the_home_folder_is_read_there_whatever_the_working_folder(
    tmp_path: Path,
) -> None:
    """Found by hand: ``path = "~/photos"`` was refused as "~/photos does not exist" (the agent was
    handed the text, which no one expanded), although ``{ file = "~/..." }`` secrets are read from
    the home folder. The real CLI, started from another folder as a scheduler starts it."""
    home, config_dir, elsewhere = tmp_path / "home", tmp_path / "etc", tmp_path / "system32"
    for folder in (home / "photos", config_dir, elsewhere):
        folder.mkdir(parents=True)
    (home / "photos" / "jdoe.jpg").write_bytes(photo(1, 64))
    config = config_dir / "mvsync.toml"
    config.write_text(GOOD.replace('{ path = "photos" }', '{ path = "~/photos" }'), encoding="utf-8")
    done = subprocess.run(
        [*mvsync_command(), "run", "Full Import (Stage Only)", "-c", str(config), "--json"],
        cwd=elsewhere,
        env={**os.environ, "HOME": str(home), "USERPROFILE": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["steps"][0]["counters"]["adds"] == 1
    assert (config_dir / "mvsync.db").is_file() and not list(elsewhere.iterdir())  # nothing beside the CWD


def test_two_agents_whose_names_differ_only_in_case_are_refused(tmp_path: Path) -> None:
    """Found: ``[agents.hr]`` and ``[agents.HR]`` were two agents, with the data folders ``data_dir/hr``
    and ``data_dir/HR`` and the lock files ``agent-hr.lock`` and ``agent-HR.lock``: one folder and one
    file on Windows (NTFS names are case-insensitive), so two tenants' token caches overwrote each other."""
    (tmp_path / "photos").mkdir()
    hr = GOOD[GOOD.index("[agents.hr]") : GOOD.index("[run_profiles")]
    (said,) = _refused(tmp_path, GOOD + hr.replace("[agents.hr]", "[agents.HR]"))
    assert said == (
        "agents: the agent names 'HR' and 'hr' differ only in case; Windows would give them one data folder "
        "and one lock file: rename one of them"
    )
