"""The EWS emulator answers as Exchange Server's documentation says (table in connector/emulator/_ews.py).

Real HTTPS to the emulator, with requests and requests-ntlm as a client would use them.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from xml.etree import ElementTree

import pytest
import requests
from PIL import Image
from requests_ntlm import HttpNtlmAuth

from connector.emulator._ews import EwsConfig, EwsEmulator, error_response
from tests.imaging.images import encode, photo

MAIL = "anna.smith@contoso.example"
NS_M = "http://schemas.microsoft.com/exchange/services/2006/messages"
NS_T = "http://schemas.microsoft.com/exchange/services/2006/types"
SOAP = """<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
  xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"
  xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">
  <soap:Header><t:RequestServerVersion Version="Exchange2013"/></soap:Header>
  <soap:Body><m:GetUserPhoto><m:Email>{email}</m:Email><m:SizeRequested>{size}</m:SizeRequested></m:GetUserPhoto>
  </soap:Body></soap:Envelope>"""


def _thumbnail() -> bytes:
    """An AD thumbnailPhoto: small and, as MS-OXWSPHOTO warns, not necessarily square."""
    return encode(Image.new("RGB", (96, 80), (10, 120, 200)), "JPEG", quality=70)


@pytest.fixture
def ews() -> Iterator[EwsEmulator]:
    with EwsEmulator(EwsConfig(auth=("ntlm", "basic", "bearer"))) as emu:
        yield emu


def _session(emu: EwsEmulator, auth: Any = "basic") -> requests.Session:
    session = requests.Session()
    session.verify, session.trust_env = emu.info["ca_cert"], False
    info = emu.info
    session.auth = (info["username"], info["password"]) if auth == "basic" else auth
    return session


def _get(session: requests.Session, emu: EwsEmulator, email: str, size: str = "HR648x648", **kw: Any) -> Any:
    url = emu.info["ews_url"] + "/s/GetUserPhoto"
    return session.get(url, params={"email": email, "size": size}, timeout=10, **kw)


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def test_rest_photo_etag_and_304(ews: EwsEmulator) -> None:
    ews.add_mailbox(MAIL, photo=photo(1))
    http = _session(ews)
    first = _get(http, ews, MAIL)
    assert first.status_code == 200 and first.headers["Content-Type"] == "image/jpeg"
    assert _size(first.content) == (648, 648)
    etag = first.headers["ETag"]
    again = _get(http, ews, MAIL, headers={"If-None-Match": etag})
    assert (again.status_code, again.content, again.headers["ETag"]) == (304, b"", etag)
    ews.set_photo(MAIL, photo(2))  # Set-UserPhoto: a new ETag, so the conditional GET gets the picture
    changed = _get(http, ews, MAIL, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag


def test_path_ignores_case_as_iis_does(ews: EwsEmulator) -> None:
    ews.add_mailbox(MAIL, photo=photo(1))
    url = ews.info["ews_url"].replace("/EWS/Exchange.asmx", "/ews/exchange.asmx") + "/s/getuserphoto"
    resp = _session(ews).get(url, params={"email": MAIL.upper(), "size": "HR96x96"}, timeout=10)
    assert resp.status_code == 200 and _size(resp.content) == (96, 96)


def test_largest_available_size_when_the_photo_is_smaller(ews: EwsEmulator) -> None:
    ews.add_mailbox(MAIL, photo=photo(1, size=360))
    assert _size(_get(_session(ews), ews, MAIL, "HR648x648").content) == (360, 360)


def test_ad_thumbnail_fallbacks(ews: EwsEmulator) -> None:
    thumb = _thumbnail()
    ews.add_mailbox(MAIL, thumbnail=thumb)  # no HD photo in the mailbox: the AD thumbnail, as is
    ews.add_mailbox("hd@contoso.example", photo=photo(3), thumbnail=thumb)
    http = _session(ews)
    assert _get(http, ews, MAIL).content == thumb
    assert _get(http, ews, "hd@contoso.example", "HR48x48").content == thumb  # HR48x48: always the thumbnail
    assert _size(_get(http, ews, "hd@contoso.example", "HR240x240").content) == (240, 240)


def test_no_photo_unknown_mailbox_and_bad_size(ews: EwsEmulator) -> None:
    ews.add_mailbox(MAIL)
    http = _session(ews)
    assert _get(http, ews, MAIL).status_code == 404
    assert _get(http, ews, "nobody@contoso.example").status_code == 500
    assert _get(http, ews, MAIL, "HR50x50").status_code == 400


def test_authentication(ews: EwsEmulator) -> None:
    ews.add_mailbox(MAIL, photo=photo(1))
    anonymous = requests.Session()
    anonymous.verify, anonymous.trust_env = ews.info["ca_cert"], False
    challenge = _get(anonymous, ews, MAIL)
    assert challenge.status_code == 401
    assert challenge.headers["WWW-Authenticate"].split(", ")[0] == "NTLM"
    info = ews.info
    assert _get(_session(ews, ("svc-mvsync", "wrong")), ews, MAIL).status_code == 401
    assert _get(_session(ews, HttpNtlmAuth(info["username"], "wrong")), ews, MAIL).status_code == 401
    ntlm = _session(ews, HttpNtlmAuth(info["username"], info["password"]))
    assert _get(ntlm, ews, MAIL).status_code == 200
    before = ews.stats()["unauthorized"]
    assert _get(ntlm, ews, MAIL).status_code == 200
    assert ews.stats()["unauthorized"] == before  # the connection stays authenticated (no new handshake)
    upn = _session(ews, (f"svc-mvsync@{'contoso.example'}", info["password"]))
    assert _get(upn, ews, MAIL).status_code == 200


def test_bearer_tokens_go_to_the_validator() -> None:
    config = EwsConfig(auth=("bearer",))
    with EwsEmulator(config, bearer_validator=lambda token: token == "good") as emu:
        emu.add_mailbox(MAIL, photo=photo(1))
        http = _session(emu, None)
        assert _get(http, emu, MAIL, headers={"Authorization": "Bearer good"}).status_code == 200
        refused = _get(http, emu, MAIL, headers={"Authorization": "Bearer bad"})
        assert refused.status_code == 401 and "invalid_token" in refused.headers["WWW-Authenticate"]


def test_soap_get_user_photo_has_changed(ews: EwsEmulator) -> None:
    ews.add_mailbox(MAIL, photo=photo(1))
    http = _session(ews)
    body = SOAP.format(email=MAIL, size="HR120x120").encode()
    headers = {"Content-Type": "text/xml; charset=utf-8"}
    first = http.post(ews.info["ews_url"], data=body, headers=headers, timeout=10)
    assert first.status_code == 200 and b"<HasChanged>true</HasChanged>" in first.content
    data = first.content.split(b"<PictureData>")[1].split(b"</PictureData>")[0]
    assert _size(base64.b64decode(data)) == (120, 120)
    again = http.post(
        ews.info["ews_url"], data=body, headers={**headers, "If-None-Match": first.headers["ETag"]}, timeout=10
    )
    assert b"<HasChanged>false</HasChanged>" in again.content and b"<PictureData></PictureData>" in again.content
    unknown = http.post(ews.info["ews_url"], data=SOAP.format(email="x@y.example", size="HR48x48"), timeout=10)
    assert unknown.status_code == 500  # the operation page: unknown address -> HTTP 500


def test_an_error_in_a_200_is_a_soap_response_message_of_class_error(ews: EwsEmulator) -> None:
    ews.add_mailbox(MAIL, photo=photo(1))
    ews.set_answer(MAIL, 200, error_response("ErrorNonExistentMailbox", "No mailbox with such guid."))
    answer = _get(_session(ews), ews, MAIL)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/xml")
    message = ElementTree.fromstring(answer.content).find(f".//{{{NS_M}}}GetUserPhotoResponse")
    assert message is not None and message.get("ResponseClass") == "Error"
    assert message.findtext(f"{{{NS_M}}}ResponseCode") == "ErrorNonExistentMailbox"
    assert message.findtext(f"{{{NS_M}}}MessageText") == "No mailbox with such guid."
    ews.set_answer(MAIL, None)
    assert _get(_session(ews), ews, MAIL).headers["Content-Type"] == "image/jpeg"


def test_server_busy_carries_back_off_milliseconds(ews: EwsEmulator) -> None:
    ews.add_mailbox(MAIL, photo=photo(1))
    ews.set_limits(budget_per_s=1.0, burst=1)
    http = _session(ews)
    assert _get(http, ews, MAIL).status_code == 200
    busy = _get(http, ews, MAIL)
    assert busy.status_code == 500 and b"ErrorServerBusy" in busy.content
    backoff = int(busy.content.split(b'Name="BackOffMilliseconds">')[1].split(b"<")[0])
    assert 1 <= backoff <= 1000


def test_ews_max_concurrency_is_enforced() -> None:
    with EwsEmulator(EwsConfig(mailboxes=8, photo_ratio=1.0, latency_ms=300, max_concurrency=3)) as emu:
        http = _session(emu)
        http.mount("https://", requests.adapters.HTTPAdapter(pool_maxsize=8))
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda n: _get(http, emu, f"user{n:05d}@contoso.example"), range(1, 9)))
        refused = [a for a in answers if a.status_code == 500]
        assert refused and all(b"ErrorExceededConnectionCount" in a.content for a in refused)
        assert sum(a.status_code == 200 for a in answers) >= 3
        assert emu.stats()["peak_in_flight"] == 3


def test_faults_reuse_the_graph_profiles(ews: EwsEmulator) -> None:
    ews.add_mailbox(MAIL, photo=photo(1))
    ews.set_faults({"503": 1.0})
    assert _get(_session(ews), ews, MAIL).status_code == 503
    ews.set_faults({"429": 1.0, "retry_after": 2.5})  # EWS has no 429: ErrorServerBusy instead
    busy = _get(_session(ews), ews, MAIL)
    assert busy.status_code == 500 and b'Name="BackOffMilliseconds">2500<' in busy.content


def test_extended_protection_needs_the_channel_binding() -> None:
    with EwsEmulator(EwsConfig(extended_protection=True)) as emu:
        emu.add_mailbox(MAIL, photo=photo(1))
        info = emu.info
        bound = _session(emu, HttpNtlmAuth(info["username"], info["password"]))  # requests-ntlm binds by default
        assert _get(bound, emu, MAIL).status_code == 200
        unbound = _session(emu, HttpNtlmAuth(info["username"], info["password"], send_cbt=False))
        assert _get(unbound, emu, MAIL).status_code == 401


def _server_version(answer: requests.Response) -> dict[str, str]:
    found = ElementTree.fromstring(answer.content).find(f".//{{{NS_T}}}ServerVersionInfo")
    assert found is not None, answer.content
    return dict(found.attrib)


def test_every_soap_answer_says_which_server_version_answered(ews: EwsEmulator) -> None:
    """The getuserphoto-operation page's example response carries ServerVersionInfo 15.0.556.8."""
    ews.add_mailbox(MAIL, photo=photo(1))
    answer = _soap(ews, SOAP.format(email=MAIL, size="HR48x48"))
    assert answer.status_code == 200 and _server_version(answer)["MajorVersion"] == "15"
    assert _server_version(answer)["Version"] == "Exchange2013"


def test_an_exchange_2010_server_refuses_the_2013_schema_and_has_no_get_user_photo() -> None:
    """Exchange 2010 has no GetUserPhoto (introduced in Exchange 2013): it does not know the
    RequestServerVersion Exchange2013 (ErrorInvalidServerVersion), refuses GetUserPhoto under a version it
    knows (ErrorSchemaValidation), and its REST form names nothing (404, an ASSUMPTION)."""
    with EwsEmulator(EwsConfig(server_version="Exchange2010_SP1")) as emu:
        emu.add_mailbox(MAIL, photo=photo(1))
        refused = _soap(emu, SOAP.format(email=MAIL, size="HR48x48"))
        assert refused.status_code == 500 and b"<e:ResponseCode" in refused.content
        assert b">ErrorInvalidServerVersion<" in refused.content
        assert b"The specified server version is invalid." in refused.content
        assert _server_version(refused) == {
            "MajorVersion": "14",
            "MinorVersion": "0",
            "MajorBuildNumber": "478",
            "MinorBuildNumber": "0",
            "Version": "Exchange2010_SP1",
        }
        older = SOAP.replace('Version="Exchange2013"', 'Version="Exchange2010_SP1"')
        unknown = _soap(emu, older.format(email=MAIL, size="HR48x48"))
        assert unknown.status_code == 500 and b">ErrorSchemaValidation<" in unknown.content
        assert _get(_session(emu), emu, MAIL).status_code == 404


def test_a_mailbox_on_an_exchange_2010_server_of_a_mixed_organisation(ews: EwsEmulator) -> None:
    ews.add_mailbox(MAIL, photo=photo(1), server_version="Exchange2010_SP1")
    ews.add_mailbox("new@contoso.example", photo=photo(2))
    for answer in (_get(_session(ews), ews, MAIL), _soap(ews, SOAP.format(email=MAIL, size="HR48x48"))):
        assert answer.status_code == 500 and b">ErrorInvalidSchemaVersionForMailboxVersion<" in answer.content
    assert _get(_session(ews), ews, "new@contoso.example").status_code == 200
    with pytest.raises(ValueError, match="server_version must be one of"):
        ews.add_mailbox("x@contoso.example", server_version="Exchange2003")


def _soap(emu: EwsEmulator, body: str) -> requests.Response:
    headers = {"Content-Type": "text/xml; charset=utf-8"}
    return _session(emu).post(emu.info["ews_url"], data=body.encode(), headers=headers, timeout=10)


def test_ews_closed_to_the_organisation_or_to_an_application_by_its_user_agent() -> None:
    """EwsEnabled $false, and an EnforceAllowList application access policy, which identifies
    applications by their user agent: 403 (an ASSUMPTION, see the module docstring)."""
    with EwsEmulator(EwsConfig(ews_allow_list=("OWA/*", "mvsync/*"))) as emu:
        emu.add_mailbox(MAIL, photo=photo(1))
        http = _session(emu)
        assert _get(http, emu, MAIL, headers={"User-Agent": "MVSync/1.0 (x)"}).status_code == 200
        refused = _get(http, emu, MAIL)  # python-requests/2.x
        assert (refused.status_code, refused.content) == (403, b"")
        emu.config.ews_enabled = False
        assert _get(http, emu, MAIL, headers={"User-Agent": "mvsync/1.0"}).status_code == 403
        assert emu.stats()["blocked"] == 2


def test_a_mixed_pool_answers_each_request_as_the_next_server_in_turn() -> None:
    """pool=(2013, 2010): behind one URL, requests alternate between an Exchange 2013 server (the photo,
    ServerVersionInfo 15) and an Exchange 2010 one (ErrorInvalidServerVersion to the SOAP request, 404 to
    the REST form), each answer as that server alone would give it (an ASSUMPTION, see the docstring)."""
    with EwsEmulator(EwsConfig(pool=("Exchange2013", "Exchange2010_SP1"))) as emu:
        emu.add_mailbox(MAIL, photo=photo(1))
        http = _session(emu)
        assert [_get(http, emu, MAIL).status_code for _ in range(4)] == [200, 404, 200, 404]
        answers = [_soap(emu, SOAP.format(email=MAIL, size="HR48x48")) for _ in range(2)]
        assert [answer.status_code for answer in answers] == [200, 500]
        assert [_server_version(answer)["MajorVersion"] for answer in answers] == ["15", "14"]
        assert b">ErrorInvalidServerVersion<" in answers[1].content
        stats = emu.stats()
    assert (stats["answered_by_Exchange2013"], stats["answered_by_Exchange2010_SP1"]) == (3, 3)


def test_an_older_server_can_answer_the_rest_form_with_errorinvalidserverversion() -> None:
    """older_rest="ErrorInvalidServerVersion" (an ASSUMPTION, see the docstring): the 2010 server of a pool
    answers the REST GetUserPhoto with that SOAP fault and its ServerVersionInfo rather than 404."""
    config = EwsConfig(pool=("Exchange2013", "Exchange2010_SP1"), older_rest="ErrorInvalidServerVersion")
    with EwsEmulator(config) as emu:
        emu.add_mailbox(MAIL, photo=photo(1))
        http = _session(emu)
        answers = [_get(http, emu, MAIL) for _ in range(2)]
    assert [answer.status_code for answer in answers] == [200, 500]
    assert b">ErrorInvalidServerVersion<" in answers[1].content
    assert _server_version(answers[1])["MajorVersion"] == "14"
