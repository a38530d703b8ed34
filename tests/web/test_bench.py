"""``mvsync bench ui`` stays runnable: a small store, every page answered (figures are not asserted)."""

from __future__ import annotations

import pytest

from connector.bench.ui import run


@pytest.mark.parametrize("persons", [400, 5, 1])
def test_bench_ui_times_every_page_on_a_small_store(persons: int) -> None:
    # 5: the sampled person's family name is not ASCII (it must be quoted in the URL); 1: a store of one
    result = run(persons=persons, requests=2)
    assert result["benchmark"] == "ui" and result["persons"] == persons
    assert {"operations", "search_no_hit", "person", "pending_ad", "coverage", "photo"} <= set(result["pages"])
    for figures in result["pages"].values():
        assert figures["p50_ms"] > 0 and figures["bytes"] > 0
