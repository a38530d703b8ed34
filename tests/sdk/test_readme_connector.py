"""The README's "Writing a connector" example runs, through the real engine, as printed."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.config import config_from_dict
from connector.engine import Engine

README = Path(__file__).parents[2] / "README.md"


@pytest.fixture
def readme_module() -> Iterator[str]:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"```python\n# my_csv_agent\.py\n(.*?)```", text, re.DOTALL)
    assert found, "the README's connector example is missing"
    module = types.ModuleType("my_csv_agent")
    sys.modules["my_csv_agent"] = module
    exec(compile(found.group(1), "README.md (my_csv_agent.py)", "exec"), module.__dict__)
    yield "my_csv_agent:CsvConnector"
    del sys.modules["my_csv_agent"]


def test_the_readme_example_imports_through_the_engine(readme_module: str, tmp_path: Path) -> None:
    people = tmp_path / "people.csv"
    people.write_text("account,mail\nada,ada@example.test\ngrace,grace@example.test\n", encoding="utf-8")
    config = config_from_dict(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
            "agents": {"csv": {"type": readme_module, "settings": {"path": str(people)}}},
            "run_profiles": {"full": {"steps": [{"type": "full-import", "agent": "csv"}]}},
        },
        base_dir=tmp_path,
    )
    engine = Engine(config)
    try:
        step = engine.run_profile("full").steps[0]
    finally:
        engine.close()
    assert step.status == "success", step.message
    assert step.counters["adds"] == 2 and step.counters["connector.rows"] == 2
