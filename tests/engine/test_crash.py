"""A process killed in the middle of an import page: the rerun gives the same result as an
uninterrupted run (one transaction per page, watermark saved only at a normal close)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from sqlalchemy import select

from connector.config import config_from_dict
from connector.engine import Engine
from connector.store.tables import agent_state, cs_object, mv_object
from tests.engine.conftest import make_config

SCRIPT = textwrap.dedent(
    """
    import sys, json
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from connector.engine import Engine
    from tests.engine.conftest import make_config
    from tests.engine.memory import directory
    tmp, prefix, crash = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    d = directory(prefix + "-exo")
    for i in range(230):
        account = f"user{{i:03d}}@example.test"
        d["objects"][f"exo-{{i:03d}}"] = {{"accountName": account, "mail": account,
                                         "displayName": f"User {{i}}", "photo": f"p{{i}}".encode()}}
    d["changes"] = [("x", {{}})] * 7
    d["crash_after_page"] = None if crash == "none" else int(crash)
    engine = Engine(make_config(tmp, prefix))
    result = engine.run_profile("full-import", agents={{"exo"}}, step_overrides={{"page_size": 50}})
    print(json.dumps(result.as_dict()))
    """
)


def _state(tmp: Path) -> tuple[list, list, str | None]:
    engine = Engine(make_config(tmp, "unused"))
    with engine.store.read() as conn:
        cs = sorted(
            (r.anchor, r.pending_type, r.pending, r.hologram)
            for r in conn.execute(select(cs_object).where(cs_object.c.agent == "exo"))
        )
        mv = [tuple(r) for r in conn.execute(select(mv_object.c.id, mv_object.c.attributes))]
        watermark = conn.execute(select(agent_state.c.watermark).where(agent_state.c.agent == "exo")).scalar()
    engine.close()
    return cs, mv, watermark


def _run(tmp: Path, crash: str) -> subprocess.CompletedProcess[str]:
    root = str(Path(__file__).resolve().parents[2])
    return subprocess.run(
        [sys.executable, "-c", SCRIPT.format(root=root), str(tmp), "crash", crash],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_killed_mid_import_then_rerun_converges(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    crashed = tmp_path / "crashed"
    reference.mkdir()
    crashed.mkdir()
    assert _run(reference, "none").returncode == 0

    killed = _run(crashed, "3")  # dies (os._exit) when asked for page 4 of 5
    assert killed.returncode == 77, killed.stderr
    cs, _, watermark = _state(crashed)
    assert len(cs) == 150  # three whole pages applied, nothing of the fourth
    assert watermark is None  # a step that did not close normally saves no watermark

    rerun = _run(crashed, "none")
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout.splitlines()[-1])["status"] == "success"
    assert _state(crashed) == _state(reference)


def test_config_from_dict_round_trip(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, "x")
    again = config_from_dict(cfg.model_dump(by_alias=True, exclude={"path", "base_dir"}), base_dir=tmp_path)
    assert again.agents.keys() == cfg.agents.keys()
