"""``mvsync doctor`` against a DC that answers its checks busy (51), unavailable (52) or timeLimitExceeded (3),
through the real CLI in process, against the real (Samba) DC.

Found in the import's bad-day pass: doctor's reachability check reads the DC's rootDSE through the importer,
whose stop for such an answer said "the import stopped there: no object it did not read is marked deleted and
the delta-import watermark stays where it was; run the import again later": doctor imports nothing. And its
write-rights check read a busy answer to its sample search as an empty OU ("no user under ... to check write
rights on", a warning), or, for the read of the rights, reported a bare ``DcRefused``.

As in test_ad_import_busy, the answer is made up in process (the agent speaks LDAPS, so a relay cannot rewrite a
result code): ldap3's ``search`` is replaced for the searches concerned only; the others go to the DC.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from ldap3 import Connection

from connector.agents.active_directory._permissions import EFFECTIVE
from tests.agents.active_directory.conftest import ADTestEnv
from tests.agents.active_directory.test_ad_export_cli import folder_to_ad
from tests.cli._configs import invoke

pytestmark = pytest.mark.samba

_CODES = [(51, "busy"), (52, "unavailable"), (3, "timeLimitExceeded")]


def _answer(
    monkeypatch: pytest.MonkeyPatch,
    admin: Connection,
    which: Callable[[str, dict[str, Any]], bool],
    code: int,
    text: str,
) -> None:
    """Answer the agent's searches that ``which`` picks (by base and keyword arguments) with ``code``, no entries."""
    real = Connection.search

    def search(self: Connection, base: str, search_filter: str, *args: Any, **kwargs: Any) -> Any:
        if self is admin or not which(base, kwargs):
            return real(self, base, search_filter, *args, **kwargs)
        self.result = {"result": code, "description": text, "message": "00002024: SvcErr: problem 5001 (BUSY)"}
        self.response = []
        return False

    monkeypatch.setattr(Connection, "search", search)


def _doctor(ad_env: ADTestEnv) -> tuple[int, dict[str, dict[str, Any]], str]:
    """``mvsync doctor --no-store --json`` on the photo solution's configuration: exit code, findings by check."""
    people, _names, photos = ad_env.people_with_photos(1)
    config = folder_to_ad(ad_env, people, photos)
    code, out, err = invoke("doctor", "-c", str(config), "--no-store", "--json")
    report = json.loads(out)
    return code, {f["check"]: f for f in report["findings"]}, out + err


def _assert_says_doctor(message: str, ad_env: ADTestEnv, what: str, code: int, text: str) -> None:
    where = f"domain controller {ad_env.ad.host}:{ad_env.ad.ldaps_port} (ldaps)"
    assert f"{where} answered {what}" in message and f"with {code} {text}" in message, message
    assert "import" not in message and "export" not in message and "watermark" not in message, message
    assert "mvsync doctor" in message and "again later" in message, message


@pytest.mark.parametrize(("code", "text"), _CODES)
def test_doctor_against_a_busy_dc_says_its_check_could_not_be_made(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch, code: int, text: str
) -> None:
    """Every search answered so: the reachability check fails naming the DC, the search and the code, in the
    words of a check (before: "the import stopped there ... the delta-import watermark ...")."""
    _answer(monkeypatch, ad_env.admin, lambda _base, _kwargs: True, code, text)
    exit_code, findings, shown = _doctor(ad_env)
    assert exit_code == 6, shown
    reachable = findings["agents.ad.reachable"]
    assert reachable["severity"] == "error", reachable
    _assert_says_doctor(reachable["message"], ad_env, "the read of its rootDSE", code, text)
    assert "Traceback" not in shown


@pytest.mark.parametrize(
    ("which", "what"),
    [
        (lambda _base, kwargs: kwargs.get("size_limit") == 1, "the search for a sample user under"),
        (lambda base, kwargs: kwargs.get("attributes") == [EFFECTIVE] and not kwargs.get("size_limit"), "the read"),
    ],
    ids=["sample-search", "rights-read"],
)
def test_doctor_s_write_rights_check_against_a_busy_dc_is_an_error_naming_it(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch, which: Callable[[str, dict[str, Any]], bool], what: str
) -> None:
    """The DC answers the reachability check, then busy to the write-rights check's sample search (before: read
    as an empty OU, "no user under ... to check write rights on", a warning) or to its read of the sample's
    rights by a base search (a DC that computes them there only; before: "DcRefused: ...")."""
    if what == "the read":  # the rights come along with the sample search on Samba: leave them out of it
        real = Connection.search

        def without_rights(self: Connection, base: str, search_filter: str, *args: Any, **kwargs: Any) -> Any:
            if self is not ad_env.admin and kwargs.get("size_limit") == 1 and kwargs.get("attributes") == [EFFECTIVE]:
                kwargs["attributes"] = ["cn"]
            return real(self, base, search_filter, *args, **kwargs)

        monkeypatch.setattr(Connection, "search", without_rights)
    _answer(monkeypatch, ad_env.admin, which, 51, "busy")
    exit_code, findings, shown = _doctor(ad_env)
    assert findings["agents.ad.reachable"]["severity"] == "ok", findings
    rights = findings["agents.ad.write-permissions"]
    assert exit_code == 6, shown
    assert rights["severity"] == "error", rights
    _assert_says_doctor(rights["message"], ad_env, what, 51, "busy")
