"""Names of a run in a directory that other runs share: account names stay valid and distinct."""

from __future__ import annotations

from connector.demo import SharedNames
from connector.demo._world import directory_users


def test_a_prefix_cut_to_sam_account_names_length_keeps_every_name_distinct() -> None:
    """Two 20-character names that a prefix would cut to one: the second is numbered, both fit."""
    names = SharedNames("ab12")
    tenant = [
        {"mailNickname": nickname, "userPrincipalName": f"{nickname}@{names.domain()}"}
        for nickname in ("anna.montgomerysmit1", "anna.montgomerysmit2", "bo.li")
    ]
    sams = [u.sam for u in directory_users(tenant, names.domain(), account_prefix=names.account_prefix)]
    assert sams == [
        "ab12-anna.montgomery",
        "ab12-anna.montgomer2",
        "ab12-bo.li",
        "ab12-svc.backup",
        "ab12-svc.scanner",
    ]
    assert names.ou("mvsync-demo") == "OU=mvsync-demo-ab12" and names.domain() == "ab12.contoso.example"
