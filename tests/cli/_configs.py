"""Configurations the CLI tests share: two generated agents, one projecting, one joining and exporting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from connector.cli import app
from tests.engine.memory import DIRECTORIES

runner = CliRunner()

#: ``mem``, an agent over the in-memory directory that ``with_directory`` names; add profiles after it.
MEM_AGENT = """
[agents.mem]
type = "tests.engine.memory:MemoryConnector"
settings = { directory = "DIRECTORY" }
projection = [{ object_class = "user" }]
import_flow = [
  { object_class = "user", cs = "accountName", mv = "accountName" },
  { object_class = "user", cs = "displayName", mv = "displayName" },
]
"""


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """The CLI in this process (wide, so that no message is wrapped): exit code, stdout, stderr."""
    result = runner.invoke(app, list(args), env={"COLUMNS": "250", **(env or {})})
    return result.exit_code, result.stdout, result.stderr


def generated_pair(count: int) -> str:
    """``src`` projects ``count`` people with a photo; ``tgt`` joins them and exports the photo's
    checksum; the ``cycle`` profile imports and synchronizes both. Add agents and profiles after it."""
    return f"""
[store]
url = "sqlite:///store.db"
[agents.src]
type = "connector.bench.generated:GeneratedConnector"
settings = {{ count = {count}, photo_bytes = 16 }}
projection = [{{ object_class = "person" }}]
import_flow = [
  {{ object_class = "person", cs = "accountName", mv = "accountName" }},
  {{ object_class = "person", cs = "displayName", mv = "displayName" }},
  {{ object_class = "person", cs = "photo", mv = "photo" }},
]
[agents.tgt]
type = "connector.bench.generated:GeneratedConnector"
settings = {{ count = {count}, seed = 3, photo_bytes = 0 }}
join = [{{ object_class = "person", match = [{{ cs = "accountName", mv = "accountName" }}] }}]
export_flow = [{{ object_class = "person", mv = "photo", cs = "thumbnailChecksum", transform = "sha256" }}]
[run_profiles.cycle]
steps = [
  {{ type = "full-import", agent = "src" }}, {{ type = "full-import", agent = "tgt" }},
  {{ type = "full-sync", agent = "src" }}, {{ type = "full-sync", agent = "tgt" }},
]
"""


def with_directory(tmp_path: Path, mem: dict[str, Any], text: str) -> Path:
    """``tmp_path/mvsync.toml`` holding ``text``, with ``DIRECTORY`` naming the in-memory directory ``mem``."""
    name = next(k for k, v in DIRECTORIES.items() if v is mem)
    path = tmp_path / "mvsync.toml"
    path.write_text(text.replace("DIRECTORY", name))
    return path
