"""The thumbnails benchmark runs and reports the figures the issue asks for."""

from __future__ import annotations

from connector.bench.thumbnails import run, synthetic_photo


def test_bench_reports_required_figures() -> None:
    result = run(images=12, passes=1)
    assert result["images_per_s_per_core"] > 0
    assert 0 < result["mean_output_bytes"] <= result["max_output_bytes"] <= 10_240
    assert result["all_within_max_bytes"]


def test_sources_are_reproducible_and_photo_sized() -> None:
    assert synthetic_photo(3) == synthetic_photo(3) != synthetic_photo(4)
    assert 40_000 < len(synthetic_photo(3)) < 200_000
