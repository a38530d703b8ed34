"""photo-folder on the bad days of an HR share, through the real CLI where a user meets them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli._configs import invoke
from tests.imaging.images import photo


def _config(tmp_path: Path, folder: Path, settings: str = "") -> Path:
    """A photo-folder agent ``hr`` on ``folder`` (``settings`` added to its own) and a profile ``import``."""
    config = tmp_path / "mvsync.toml"
    config.write_text(
        f"""
[store]
url = "sqlite:///{(tmp_path / "mvsync.db").as_posix()}"
[agents.hr]
type = "photo-folder"
settings = {{ path = "{folder.as_posix()}"{", " + settings if settings else ""} }}
projection = [{{ object_class = "photoFile" }}]
import_flow = [{{ object_class = "photoFile", cs = "accountName", mv = "accountName" }}]
[run_profiles.import]
steps = [{{ type = "full-import", agent = "hr" }}]
""",
        encoding="utf-8",
    )
    return config


def test_a_file_size_limit_past_the_decoders_is_a_configuration_error_not_a_stopped_step(tmp_path: Path) -> None:
    """Found in the photo-folder bad-day pass: ``max_file_bytes = 3000000000`` (an administrator letting
    big scans in) was accepted, doctor passed, and the import stopped at the first photo as
    stopped-connector-exception (exit 4) with a traceback in the log: ``InvalidSpecError: max_input_bytes:
    3000000000 is outside 1..2147483648``, a name the configuration does not have. It is now refused with
    the configuration (exit 2), naming the setting and its bound, before any step runs."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "ann.jpg").write_bytes(photo(1, size=64))
    config = _config(tmp_path, folder, "max_file_bytes = 3000000000")
    code, out, err = invoke("run", "import", "-c", str(config))
    assert code == 2, (out, err)
    assert "agents.hr.settings.max_file_bytes" in err and "2147483648" in err, err
    assert "Traceback" not in out + err and "max_input_bytes" not in err
    code, out, _ = invoke("doctor", "-c", str(config), "--json")
    findings = json.loads(out)["findings"]
    assert any(f["severity"] == "error" and "max_file_bytes" in f["message"] for f in findings), findings

    config = _config(tmp_path, folder, "max_file_bytes = 2147483648")  # the bound itself is a good value
    assert invoke("run", "import", "-c", str(config))[0] == 0
