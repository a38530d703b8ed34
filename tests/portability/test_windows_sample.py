"""samples/mvsync-task.xml: a Task Scheduler definition that parses, cannot overlap runs, and runs a
run profile the sample configuration has (a renamed profile would make every scheduled run exit 2)."""

from __future__ import annotations

import shlex
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NS = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}


def _task() -> ET.Element:
    return ET.parse(ROOT / "samples" / "mvsync-task.xml").getroot()


def test_the_task_never_starts_a_second_instance() -> None:
    task = _task()
    assert task.tag == f"{{{NS['t']}}}Task"
    assert task.findtext("t:Settings/t:MultipleInstancesPolicy", namespaces=NS) == "IgnoreNew"
    assert task.findtext("t:Principals/t:Principal/t:LogonType", namespaces=NS) == "Password"  # gMSA: no password


def test_the_task_runs_a_profile_of_the_sample_configuration() -> None:
    exec_ = _task().find("t:Actions/t:Exec", NS)
    assert exec_ is not None
    assert (exec_.findtext("t:Command", namespaces=NS) or "").endswith(r"\Scripts\mvsync.exe")
    # Windows command-line rules: backslashes are literal, double quotes group
    args = [a.strip('"') for a in shlex.split(exec_.findtext("t:Arguments", namespaces=NS) or "", posix=False)]
    profile = args[args.index("run") + 1]
    sample = tomllib.loads((ROOT / "samples" / "mvsync.toml").read_text(encoding="utf-8"))
    assert profile in sample["run_profiles"]
    assert "--wait" in args and args[args.index("-c") + 1] == r"C:\ProgramData\mvsync\mvsync.toml"


def test_the_readme_is_honest_about_what_ran_on_windows() -> None:
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert (
        "Tested on Linux; the Windows code paths are type-checked for win32 and run with POSIX-only modules removed."
        in readme
    )
    assert "samples/mvsync-task.xml" in readme and "IgnoreNew" in readme
