"""Faults the real world delivers: a throttled, flaky Graph with short-lived tokens; a DC restart.

Time is scaled down (see ``connector.bench.resilience``): the issue's two-minute access tokens
become 2-second ones against a ~5-second import of a 200-user tenant, so tokens expire during it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.bench.resilience import RestartableDC, exo_import_under_faults, export_across_dc_restart

#: A seed whose draws include every kind of fault of the mix (the draws depend only on the seed).
FAULT_SEED = 13


def test_full_import_under_the_resilience_mix_matches_a_clean_import(tmp_path: Path) -> None:
    figures = exo_import_under_faults(tmp_path, users=200, seed=FAULT_SEED, token_lifetime_s=2)
    faulted = figures["faulted"]
    injected = faulted["faults_injected"]
    assert {"429", "503", "reset", "truncate"} <= set(injected), injected
    assert figures["photos"] > 80
    assert figures["identical"], figures
    assert figures["objects_missing"] == 0 and figures["checksums_different"] == 0
    # the same per-object outcome as without faults (on-premises mailboxes are per-object errors)
    assert faulted["error_names"] == figures["clean"]["error_names"]
    assert faulted["status"] == figures["clean"]["status"]
    assert faulted["token_requests"] > figures["clean"]["token_requests"]  # tokens expired and were renewed


@pytest.mark.samba
def test_dc_restart_mid_export_leaves_the_rest_pending_and_the_next_export_finishes(
    own_dc: RestartableDC, tmp_path: Path
) -> None:
    dc = own_dc
    figures = export_across_dc_restart(tmp_path, dc.settings, stop=dc.stop, restart=dc.start, batch_size=4)
    assert figures["staged_exports"] > 8, figures
    # the first batch reached the DC, then it went down: the rest stayed pending, as retryable errors
    assert figures["exported_before_outage"] == 4, figures
    assert figures["pending_after_outage"] == figures["staged_exports"] - 4, figures
    assert set(figures["outage_error_names"]) == {"cd-server-down"}, figures
    # the next export wrote exactly the rest, nothing twice; the confirming import agrees
    assert figures["exported_after_restart"] == figures["staged_exports"] - 4, figures
    assert figures["rewritten_after_restart"] == [], figures
    assert figures["photos_in_directory"] == figures["staged_exports"], figures
    assert figures["pending_final"] == 0 and figures["final_cycle_exports"] == 0, figures
    assert figures["confirm_status"] in ("success", "completed-discovery-errors"), figures
