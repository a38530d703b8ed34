"""samples/mvsync-task.xml: a Task Scheduler definition that parses, cannot overlap runs, and runs a
run profile the sample configuration has (a renamed profile would make every scheduled run exit 2)."""

from __future__ import annotations

import re
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


def _windows_commands() -> list[str]:
    """The README's Windows command lines (a ``Scripts\\`` folder or the ``py`` launcher), each with the
    lines of its code block, or of its paragraph, that run before it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    units = re.findall(r"```[a-z]*\n(.*?)```", readme, re.S)
    units += re.sub(r"```[a-z]*\n.*?```", "", readme, flags=re.S).split("\n\n")
    return [unit for unit in units if "\\Scripts\\" in unit or "py -3" in unit]


def test_the_windows_commands_quote_pip_extras_and_install_what_the_demo_needs() -> None:
    """Found: the Windows install block ran ``pip install C:\\src\\mvsync`` and then ``mvsync demo``, which
    needs the emulator extra (without it the command exits 2 asking for mvsync[emulator]: see
    test_base_install); and the quick start's ``pip install -e .[web,emulator]`` was unquoted, where
    PowerShell, the shell Windows Server opens, reads a comma as a list separator. Double quotes work in
    cmd.exe and PowerShell alike (cmd.exe keeps single quotes as part of the name)."""
    commands = _windows_commands()
    assert len(commands) >= 3
    for unit in commands:
        for extras in re.findall(r"\S*\[[\w, -]+\]\S*", unit):
            if "pip" in unit.split(extras)[0].rsplit("\n", 1)[-1]:  # a pip argument, not a note
                assert extras.lstrip("`").startswith('"'), (extras, unit)
        if re.search(r"mvsync(\.exe)?\"? demo\b", unit):
            assert re.search(r"pip\"? install [^\n]*\[[^\]\n]*emulator", unit), unit
