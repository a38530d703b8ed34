"""``mvsync demo --data-dir DIR`` with a DIR that cannot be made: a usage error (exit code 2) naming the
path and what to do, never a traceback; with ``--json`` the one failure object. Refused before the
emulator starts, so these run in a moment."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from connector.config import ConfigError
from connector.demo import prepare_dir
from tests.cli._configs import invoke


def test_a_file_in_the_path_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    code, out, err = invoke("demo", "--data-dir", str(tmp_path / "afile" / "sub"), "--json")
    [line] = out.splitlines()
    doc = json.loads(line)
    assert code == 2 and doc["status"] == "stopped-configuration" and doc["exit_code"] == 2
    assert f"{tmp_path / 'afile'} is not a folder" in doc["message"]
    assert "choose another --data-dir" in doc["message"]
    assert "Traceback" not in err


def test_a_file_as_the_folder_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    code, _, err = invoke("demo", "--data-dir", str(tmp_path / "afile"))
    assert code == 2 and "exists and is not a folder; choose another --data-dir" in err


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(errno.EACCES, "Permission denied"),
        FileNotFoundError(errno.ENOENT, "No such file or directory"),  # /proc/nope
    ],
)
def test_a_folder_the_system_refuses_names_the_path_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError
) -> None:
    """Root is allowed everything on the test machine: the refusal is the system's ``mkdir`` raising."""

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(Path, "mkdir", refuse)
    target = tmp_path / "demo"
    with pytest.raises(ConfigError) as caught:
        prepare_dir(target)
    assert str(caught.value) == (
        f"cannot make the demo folder {target}: {error.strerror}; create the folder or choose another --data-dir"
    )
