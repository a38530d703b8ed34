"""``mvsync bench export-ad --auth kerberos``: the agent binds with a least-privilege keytab account and
still writes every photo once, with the rights read up front in the resolve search (no extra reads)."""

from __future__ import annotations

import pytest

from tests.harness.samba_dc import ADSettings, KerberosAccount


@pytest.mark.samba
@pytest.mark.parametrize("check", [True, False])
def test_bench_export_ad_kerberos(
    samba_ad: ADSettings, samba_kerberos: KerberosAccount, check: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.bench.export_ad import run

    monkeypatch.setenv("KRB5_CONFIG", str(samba_kerberos.krb5_conf))  # run() sets it; restored afterwards
    result = run(users=12, photo_bytes=2000, batch=5, driver="direct", auth="kerberos", check_permissions=check)
    assert (result["auth"], result["check_permissions"]) == ("kerberos", check)
    assert (result["first_run_writes"], result["second_run_writes"]) == (12, 0)
    assert result["rights_checked"] == (12 if check else 0)
    assert result["rights_base_reads"] == 0
    assert result["export_s"] > 0
