"""Configurations the CLI tests share: two generated agents, one projecting, one joining and exporting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.engine.memory import DIRECTORIES


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
