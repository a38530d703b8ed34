"""Output redirected to a file on Windows is written in the ANSI code page, and a character it lacks
is escaped, never a traceback.

Python docs (sys.stdout): on Windows, "non-character devices such as disk files and pipes use the
system locale encoding (i.e. the ANSI codepage)", cp1252 on a Western European server, with the
'strict' error handler for stdout. ``mvsync photo convert photos -o out > convert.log`` prints a
check mark (U+2713) and file names such as ``Łukasz.jpg``, neither of which cp1252 has. The real
console script runs here with ``PYTHONIOENCODING=cp1252``, which gives stdout that very encoding and
error handler, and its stdout goes to a file as a redirection sends it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.imaging.images import photo

MVSYNC = str(Path(sys.executable).with_name("mvsync"))


def test_a_redirected_convert_on_a_cp1252_server_prints_every_line(tmp_path: Path) -> None:
    """Found: 'UnicodeEncodeError: 'charmap' codec can't encode character '\\u2713'', a traceback and exit
    code 1 after the first photo, with the photos converted but their report lost."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "\u0141ukasz.jpg").write_bytes(photo(1))
    (photos / "jos\u00e9.jpg").write_bytes(photo(2))
    log = tmp_path / "convert.log"
    env = {**os.environ, "PYTHONIOENCODING": "cp1252", "COLUMNS": "250"}
    with log.open("wb") as stdout:
        done = subprocess.run(
            [MVSYNC, "photo", "convert", str(photos), "-o", str(tmp_path / "out")],
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode("cp1252", "replace")
    text = log.read_bytes().decode("cp1252")  # the file is in the code page, as Windows tools read it
    assert "\\u2713 " in text and "\\u0141ukasz.jpg" in text and "jos\u00e9.jpg" in text  # é is in cp1252
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["jos\u00e9 96x96.jpg", "\u0141ukasz 96x96.jpg"]
