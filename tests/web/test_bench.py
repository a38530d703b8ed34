"""``mvsync bench ui`` stays runnable: a small store, every page answered (figures are not asserted)."""

from __future__ import annotations

from connector.bench.ui import run


def test_bench_ui_times_every_page_on_a_small_store() -> None:
    result = run(persons=400, requests=2)
    assert result["benchmark"] == "ui" and result["persons"] == 400
    assert {"operations", "search_no_hit", "person", "pending_ad", "coverage", "photo"} <= set(result["pages"])
    for figures in result["pages"].values():
        assert figures["p50_ms"] > 0 and figures["bytes"] > 0
