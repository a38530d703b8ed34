"""A DirSync delta whose search the DC refuses, against the real (Samba) DC.

Microsoft documents that a DC may reject a DirSync cookie ("Polling for Changes Using the DirSync Control": "It is
also possible the other DC rejects the cookie returned from the original DC. The search generates an LDAP error on
the server like "0000203D: LdapErr: DSID-xxxxxxxx, comment: Error processing control, data 0", and the client
application may generate an error such as ... "A protocol error occurred." ... The client application should handle
this case and retry with a full sync if this error is encountered"). Before, the step said only "DirSync failed: 2
protocolError (was the account's permission withdrawn?)": the DC's text, which tells a rejected cookie from a
withdrawn right, was left out, and the rejected cookie was not among the causes named.

Samba cannot be made to reject its own cookie on request, so the answer is made up in process (ldap3's ``search``
replaced for the DirSync read of the changes only), as in test_ad_import_busy; every other search is real.
"""

from __future__ import annotations

import pytest

from tests.agents.active_directory.conftest import ADTestEnv
from tests.agents.active_directory.test_ad_import_busy import _changes, delta_answered

pytestmark = pytest.mark.samba

#: The answer Microsoft documents for a DirSync cookie a DC rejects (the DSID varies by build).
_REJECTED = {
    "result": 2,
    "description": "protocolError",
    "message": "0000203D: LdapErr: DSID-0C0907E9, comment: Error processing control, data 0, v1db1",
}


def test_a_rejected_dirsync_cookie_names_the_dc_s_text_and_the_full_import(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step stops naming the DC, its answer with its text, both causes (a rejected cookie, as Microsoft
    documents, or a withdrawn right) and the full import that fixes either; no delete is staged and the next delta
    (the DC answering again) still reads the change: the watermark stayed."""
    stopped, pending_before, pending_after, again = delta_answered(ad_env, monkeypatch, "dirsync", _changes, _REJECTED)
    step = stopped.steps[0]
    message = step.message
    assert step.status == "stopped-connector-error", step.as_dict()
    assert f"domain controller {ad_env.ad.host}:{ad_env.ad.ldaps_port} (ldaps)" in message, message
    assert f"2 protocolError: {_REJECTED['message']}" in message, message
    assert "rejected the DirSync cookie" in message and "Replicating Directory Changes" in message, message
    assert "Run a full import of agent 'ad'" in message, message
    assert "the delta-import watermark stays where it was" in message, message
    assert pending_after == pending_before, step.as_dict()  # no delete staged
    assert again.status == "success", [s.as_dict() for s in again.steps]
    counters = again.steps[0].counters
    assert sum(counters.get(name, 0) for name in ("adds", "updates", "unchanged")) == 1, counters
