"""Pure logic of the active-directory agent: no server needed."""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from connector.agents.active_directory import ActiveDirectorySettings, Watermark, classify_result
from connector.agents.active_directory._connection import ServerUnreachable, cookie_gone
from connector.agents.active_directory._export import Exporter, RateLimiter, plan_change
from connector.agents.active_directory._import import Importer
from connector.agents.active_directory._ldap import (
    decode_values,
    dn_in_scope,
    equality_filter,
    equals_filter,
    guid_bytes,
    guid_filter,
    guid_text,
    normalize_dn,
    validate_filter,
)
from connector.agents.active_directory._ldif import LdifWriter, ldif_line, modify_record
from connector.agents.active_directory._schema import build_schema, unknown_attributes
from connector.sdk import (
    AttributeChange,
    AttributeType,
    ConfigurationError,
    ConnectorContext,
    CSEntryChange,
    ExportStatus,
    ScopeViolationError,
    ServerDownError,
    StopRunError,
)

USER = build_schema(["employeeID", "proxyAddresses|string[]"]).object_classes[0]
ALLOWED = frozenset({"thumbnailphoto", "mail", "proxyaddresses"})
GUID = "39ac58b0-af17-4fb5-bb5a-01c20c9444c8"
BASE_SETTINGS: dict[str, Any] = {
    "host": "dc.example.test",
    "bind_dn": "CN=svc,DC=example,DC=test",
    "password": "s3cret-Value",
    "base_dns": ["OU=People,DC=example,DC=test"],
}


# ------------------------------------------------------------------------------------- filters
def test_filter_values_are_escaped() -> None:
    assert equality_filter("department", "R&D (EMEA)*\\x") == r"(department=R&D \28EMEA\29\2a\5cx)"
    assert (
        equals_filter("(objectClass=user)", {"sn": "a*", "co": "(x)"}) == r"(&(objectClass=user)(co=\28x\29)(sn=a\2a))"
    )
    assert equals_filter("(objectClass=user)", {}) == "(objectClass=user)"
    # NUL cannot end the value early or reach the server raw (RFC 4515: \00)
    assert equality_filter("description", "a\x00b*") == r"(description=a\00b\2a)"
    with pytest.raises(ValueError, match="attribute name"):
        equality_filter("sn)(cn=*", "x")


def test_binary_guid_filter_escapes_every_byte() -> None:
    assert guid_text(guid_bytes(GUID)) == GUID
    assert guid_bytes(GUID) == uuid.UUID(GUID).bytes_le
    text = guid_filter([GUID])
    assert text.startswith("(|(objectGUID=\\b0\\58\\ac\\39")
    assert len(text) == len("(|(objectGUID=)") + 16 * 3 + 1


@pytest.mark.parametrize("bad", ["objectClass=user", "(&(objectClass=user)", "(&(a=b))(", ""])
def test_bad_filters_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_filter(bad)


def test_values_decode_by_schema_type() -> None:
    assert decode_values("uSNChanged", AttributeType.INTEGER, [b"42"]) == [42]
    when = decode_values("whenChanged", AttributeType.DATETIME, [b"20240131120000.0Z"])[0]
    assert when == _dt.datetime(2024, 1, 31, 12, tzinfo=_dt.UTC)
    assert decode_values("objectGUID", AttributeType.STRING, [uuid.UUID(GUID).bytes_le]) == [GUID]
    assert decode_values("thumbnailPhoto", AttributeType.BINARY, [b"\xff\xd8"]) == [b"\xff\xd8"]


# ------------------------------------------------------------------------------------- settings
def test_plain_ldap_needs_explicit_opt_in() -> None:
    with pytest.raises(ValidationError, match="allow_plain_ldap"):
        ActiveDirectorySettings.model_validate({**BASE_SETTINGS, "security": "plain"})
    ok = ActiveDirectorySettings.model_validate({**BASE_SETTINGS, "security": "plain", "allow_plain_ldap": True})
    assert ok.effective_port == 389


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("host", "ldap://dc1.example.test"),
        ("host", "ldaps://dc1.example.test"),
        ("host", "dc1.example.test:389"),
        ("host", "dc1.example.test/"),
        ("host", " dc1.example.test"),
        ("fallback_hosts", ["dc2.example.test", "ldap://dc3.example.test"]),
    ],
)
def test_a_dc_given_as_a_url_or_with_a_port_is_refused(key: str, value: Any) -> None:
    """Found in the QA pass: ldap3 reads ``ldap://dc1`` as plain LDAP whatever ``security`` says, so the
    bind password crossed the network unencrypted with ``security = 'ldaps'`` and no ``allow_plain_ldap``
    (Samba refused the bind as strongerAuthRequired; a DC that takes simple binds on 389 accepted it)."""
    with pytest.raises(ValidationError, match="is not a host name: give the DC's name or address alone"):
        ActiveDirectorySettings.model_validate({**BASE_SETTINGS, key: value})


@pytest.mark.parametrize("host", ["dc1.example.test", "dc1", "10.0.0.10", "fd00::a", "[fd00::a]"])
def test_a_dc_name_or_address_is_taken(host: str) -> None:
    assert ActiveDirectorySettings.model_validate({**BASE_SETTINGS, "host": host}).host == host


def test_settings_reject_overlapping_bases_and_bad_filters_and_hide_the_password() -> None:
    with pytest.raises(ValidationError, match="inside"):
        ActiveDirectorySettings.model_validate(
            {
                **BASE_SETTINGS,
                "base_dns": ["OU=People,DC=example,DC=test", "ou=x, ou=people,dc=example,dc=test"],
            }
        )
    with pytest.raises(ValidationError, match="filter"):
        ActiveDirectorySettings.model_validate({**BASE_SETTINGS, "filter": "(objectClass=user"})
    settings = ActiveDirectorySettings.model_validate(BASE_SETTINGS)
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())
    assert settings.effective_port == 636 and settings.write_rate == 50.0
    assert ActiveDirectorySettings.model_validate({**BASE_SETTINGS, "max_writes_per_second": 0}).write_rate is None


def test_dns_compare_by_their_values_not_by_how_they_are_escaped() -> None:
    """RFC 4514 lets a character be escaped as ``\\`` and itself or as its hex code; the DC reads a base DN
    written either way and spells DNs back one way, so DNs compare by their values (a base DN written with
    the hex form held nobody). Escaped commas stay part of their value."""
    people = [normalize_dn("OU=People,DC=example,DC=test")]
    assert normalize_dn("OU=R\\2BD,DC=example,DC=test") == normalize_dn("ou=r\\+d, dc=Example,DC=test")
    assert normalize_dn("CN=J\\C3\\BCrgen,DC=x") == normalize_dn("CN=Jürgen,DC=x")
    assert dn_in_scope("CN=x,OU=People,DC=example,DC=test", people)
    assert dn_in_scope("CN=Smith\\2C John,OU=People,DC=example,DC=test", people)
    assert not dn_in_scope("CN=x,OU=a\\,OU\\=People,DC=example,DC=test", people)
    assert not dn_in_scope("CN=x,OU=a\\2COU\\3DPeople,DC=example,DC=test", people)
    assert dn_in_scope("CN=x,OU=a\\\\,OU=People,DC=example,DC=test", people)  # an escaped backslash, then a comma
    # disjoint bases whose text only looks nested are accepted; the same base spelled twice is not
    ActiveDirectorySettings.model_validate(
        {**BASE_SETTINGS, "base_dns": ["OU=People,DC=example,DC=test", "OU=a\\,OU\\=People,DC=example,DC=test"]}
    )
    with pytest.raises(ValidationError, match="inside"):
        ActiveDirectorySettings.model_validate(
            {**BASE_SETTINGS, "base_dns": ["OU=R\\2BD,DC=example,DC=test", "OU=r\\+d,DC=example,DC=test"]}
        )


# ------------------------------------------------------------------------------------- LDIF
def test_ldif_lines_base64_what_is_not_safe_and_fold_at_76() -> None:
    assert ldif_line("mail", "a@b.test") == "mail: a@b.test\n"
    for unsafe in (" lead", ":colon", "<lt", "trail ", "Jürgen", "two\nlines"):
        line = ldif_line("cn", unsafe)
        assert line.startswith("cn:: ") and base64.b64decode(line[5:]).decode() == unsafe
    photo = bytes(range(256)) * 4
    folded = ldif_line("thumbnailPhoto", photo)
    lines = folded.rstrip("\n").split("\n")
    assert all(len(line) <= 76 for line in lines) and all(line.startswith(" ") for line in lines[1:])
    unfolded = lines[0] + "".join(line[1:] for line in lines[1:])
    assert base64.b64decode(unfolded.split(":: ", 1)[1]) == photo


def test_ldif_modify_record_replace_and_clear() -> None:
    record = modify_record(
        "CN=Ann,OU=People,DC=example,DC=test",
        [("replace", "thumbnailPhoto", [b"\xff\xd8\xff"]), ("replace", "mail", [])],
    )
    assert record == (
        "dn: CN=Ann,OU=People,DC=example,DC=test\nchangetype: modify\n"
        "replace: thumbnailPhoto\nthumbnailPhoto:: /9j/\n-\nreplace: mail\n-\n\n"
    )


def _photo_records(tag: str, count: int) -> list[str]:
    return [
        modify_record(f"CN={tag}{i},OU=People,DC=example,DC=test", [("replace", "thumbnailPhoto", [bytes([i]) * 3000])])
        for i in range(count)
    ]


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE (a file-size limit the kernel enforces) is POSIX")
def test_an_ldif_batch_the_disk_takes_only_part_of_is_cut_off_again(tmp_path: Path) -> None:
    """Found in the ops pass: with the disk full in the middle of a batch, the LDIF file kept the part
    written, a record cut inside its base64 photo, and the next export appended its first ``dn:`` right
    after it on the same line: a file ``ldapmodify -f`` stops on until someone edits it by hand. The
    kernel's file-size limit makes the write stop part-way, as a full disk does (Python ignores SIGXFSZ)."""
    import resource

    path = tmp_path / "changes.ldif"
    writer = LdifWriter(path)
    writer.write(_photo_records("a", 2))
    whole = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(whole) + 5000, hard))  # full inside the second record
    try:
        with pytest.raises(StopRunError, match=r"\(File too large\): this batch stays pending"):
            writer.write(_photo_records("b", 2))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert path.read_bytes() == whole
    writer.write(_photo_records("b", 2))  # the next export, once there is room
    writer.close()
    assert path.read_bytes() == whole + "".join(_photo_records("b", 2)).encode("ascii")


def test_an_ldif_batch_interrupted_while_it_is_written_is_cut_off_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in a bad-day pass: Ctrl-C (or a stop signal) while a batch was made durable left the whole
    batch in the file, while the engine, which had no result for it, kept it pending: the next export
    appended the same records again, and whoever reviews and applies the file got every person twice.
    Now the file ends where the batch began, as after a full disk, and the interruption goes on."""
    import signal

    from connector.agents.active_directory import _ldif

    path = tmp_path / "changes.ldif"
    writer = LdifWriter(path)
    writer.write(_photo_records("a", 2))
    whole = path.read_bytes()
    real_fsync = os.fsync

    def ctrl_c_while_syncing(fd: int) -> None:
        signal.raise_signal(signal.SIGINT)  # the handler raises KeyboardInterrupt here

    monkeypatch.setattr(_ldif.os, "fsync", ctrl_c_while_syncing)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job ignores SIGINT
    try:
        with pytest.raises(KeyboardInterrupt):
            writer.write(_photo_records("b", 2))
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.setattr(_ldif.os, "fsync", real_fsync)
    assert path.read_bytes() == whole
    assert writer.records == 2
    writer.write(_photo_records("b", 2))  # the next export writes the batch once
    writer.close()
    assert path.read_bytes() == whole + "".join(_photo_records("b", 2)).encode("ascii")


# ------------------------------------------------------------------------------------- results
@pytest.mark.parametrize(
    ("code", "status", "name"),
    [
        (0, ExportStatus.SUCCESS, ""),
        (19, ExportStatus.FAILED, "constraint-violation"),
        (21, ExportStatus.FAILED, "constraint-violation"),
        (32, ExportStatus.FAILED, "cd-missing-object"),
        (50, ExportStatus.FAILED, "permission-issue"),
        (51, ExportStatus.RETRY, "cd-server-busy"),
        (52, ExportStatus.RETRY, "cd-server-busy"),
        (53, ExportStatus.FAILED, "cd-error"),
        (80, ExportStatus.FAILED, "cd-error"),
    ],
)
def test_result_codes_map_to_mim_error_names(code: int, status: ExportStatus, name: str) -> None:
    assert classify_result(code) == (status, name)


# ------------------------------------------------------------------------------------- planning
def _update(*changes: AttributeChange, previous: dict[str, Any] | None = None) -> CSEntryChange:
    change = CSEntryChange.update("user", GUID, changes)
    change.identifier = "7"
    change.previous = previous or {}
    return change


def test_plan_writes_a_replacement_as_the_engine_staged_it() -> None:
    """The engine stages an export only for a value that differs from what it expects the directory to
    hold (hologram, or an unconfirmed write); the agent does not check again against the hologram."""
    photo = b"\xff\xd8\xffphoto"
    # hologram A, unconfirmed B (written, not yet imported), staged A again: A must be written
    assert plan_change(
        _update(AttributeChange.replace("thumbnailPhoto", photo), previous={"thumbnailPhoto": photo}),
        USER,
        ALLOWED,
    ) == [("replace", "thumbnailPhoto", [photo])]
    assert plan_change(_update(AttributeChange.replace("thumbnailPhoto", photo)), USER, ALLOWED) == [
        ("replace", "thumbnailPhoto", [photo])
    ]
    # a clear is a MODIFY_REPLACE with no values, idempotent whether or not the attribute is there
    assert plan_change(_update(AttributeChange.replace("mail"), previous={"mail": "a@b"}), USER, ALLOWED) == [
        ("replace", "mail", [])
    ]
    assert plan_change(_update(AttributeChange.delete("mail")), USER, ALLOWED) == [("replace", "mail", [])]
    # multi-valued add/delete only send what changes
    ops = plan_change(
        _update(AttributeChange.add("proxyAddresses", "smtp:a", "smtp:b"), previous={"proxyAddresses": ["smtp:a"]}),
        USER,
        ALLOWED,
    )
    assert ops == [("add", "proxyAddresses", ["smtp:b"])]


def test_plan_refuses_a_thumbnail_photo_that_is_no_image() -> None:
    """Found (QA): bytes that are no image (a flow from the wrong metaverse attribute, an ETag or a hash)
    were written to thumbnailPhoto, which AD takes and no client shows. Now that person's error; an empty
    value (a removal) and any image format AD's documentation allows still go."""
    wrong = plan_change(_update(AttributeChange.replace("thumbnailPhoto", b'"etag-5f1c"')), USER, ALLOWED)
    assert not isinstance(wrong, list)
    assert (wrong.status, wrong.error_name) == (ExportStatus.FAILED, "not-an-image")
    assert "thumbnailPhoto would be 11 bytes that are no image (not sent)" in (wrong.error_detail or "")
    for fine in (b"", b"GIF89a" + bytes(10), b"\x89PNG\r\n\x1a\n" + bytes(10)):
        planned = plan_change(_update(AttributeChange.replace("thumbnailPhoto", fine)), USER, ALLOWED)
        assert isinstance(planned, list), (fine, planned)


def test_plan_refuses_oversize_photos_and_multiple_values() -> None:
    big = _update(AttributeChange.replace("thumbnailPhoto", b"x" * 102_401))
    result = plan_change(big, USER, ALLOWED)
    assert not isinstance(result, list)
    assert (result.status, result.error_name, result.identifier) == (
        ExportStatus.FAILED,
        "constraint-violation",
        "7",
    )
    fits = plan_change(
        _update(AttributeChange.replace("thumbnailPhoto", b"\xff\xd8\xff" + b"x" * 102_397)), USER, ALLOWED
    )
    assert isinstance(fits, list), fits
    two = plan_change(_update(AttributeChange.replace("mail", "a", "b")), USER, ALLOWED)
    assert not isinstance(two, list) and two.error_name == "constraint-violation"


def test_plan_scope_guard_and_unsupported_operations() -> None:
    with pytest.raises(ScopeViolationError, match="displayName"):
        plan_change(_update(AttributeChange.replace("displayName", "x")), USER, ALLOWED)
    with pytest.raises(ScopeViolationError, match="import-only") as computed:
        plan_change(_update(AttributeChange.replace("uSNChanged", 1)), USER, ALLOWED | {"usnchanged"})
    assert "remove the export flow that names it" in str(computed.value)  # what to do, not only what is wrong
    for change in (CSEntryChange.delete("user", GUID), CSEntryChange.add("user", GUID, {"mail": "a"})):
        result = plan_change(change, USER, ALLOWED)
        assert not isinstance(result, list) and result.error_name == "cd-error"


def test_plan_whole_object_replace_clears_what_it_does_not_name() -> None:
    change = CSEntryChange.replace("user", GUID, {"mail": "new@b"})
    change.previous = {"mail": "old@b", "thumbnailPhoto": b"p"}
    assert plan_change(change, USER, ALLOWED) == [
        ("replace", "mail", ["new@b"]),
        ("replace", "proxyAddresses", []),
        ("replace", "thumbnailPhoto", []),
    ]


# ------------------------------------------------------------------------------------- pacing, watermark
def test_rate_limiter_paces_without_bursts() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(50, clock=lambda: now[0], sleep=sleep)
    for _ in range(51):
        limiter.wait()
    assert now[0] == pytest.approx(101.0)  # 51 calls at 50/s: the last one a second after the first
    unlimited = RateLimiter(None, clock=lambda: now[0], sleep=sleep)
    count = len(slept)
    unlimited.wait()
    assert len(slept) == count


def test_watermark_round_trip_and_garbage() -> None:
    mark = Watermark(GUID, 1234, b"\x00cookie", True)
    assert Watermark.loads(mark.dumps()) == mark
    with pytest.raises(StopRunError, match="full import"):
        Watermark.loads("12345")


# ------------------------------------------------------------------------------------- transient errors
class _DownLink:
    def run(self, operation: Any) -> Any:
        raise ServerUnreachable("the connection keeps failing")


class _DownPool:
    def __init__(self) -> None:
        self.leases = 0

    @contextlib.contextmanager
    def lease(self) -> Iterator[_DownLink]:
        self.leases += 1
        yield _DownLink()


def test_unreachable_server_gives_retry_results_once_per_batch() -> None:
    pool = _DownPool()
    exporter = Exporter(
        pool=pool,  # type: ignore[arg-type]
        object_class=USER,
        allowed=ALLOWED,
        bases=["OU=People,DC=example,DC=test"],
        normalized_bases=["ou=people,dc=example,dc=test"],
        write_rate=None,
        threads=4,
        ldif=None,
        dry_run=False,
        log=None,
    )
    changes = []
    for i in range(3):
        change = CSEntryChange.update("user", str(uuid.uuid4()), [AttributeChange.replace("mail", f"{i}@x")])
        change.identifier = str(i)
        changes.append(change)
    with pytest.raises(ServerDownError) as caught:  # the step stops: later batches would wait for the same DC
        exporter.export(changes)
    results = caught.value.results
    assert [r.identifier for r in results] == ["0", "1", "2"]  # handed to the engine to record
    assert {(r.status, r.error_name) for r in results} == {(ExportStatus.RETRY, "cd-server-down")}
    assert "the rest stay pending for the next export" in str(caught.value)
    assert pool.leases == 1  # resolution failed once; no per-change timeouts


# ------------------------------------------------------------------------------------- base DNs
class _ReferringLink:
    """A DC of the parent domain asked for an OU of a child domain: AD answers with a referral (10)."""

    host = "dc.example.test"

    def run(self, operation: Any) -> Any:
        return {"result": 10, "description": "referral", "referrals": [CHILD_REFERRAL]}, []


CHILD_REFERRAL = "ldap://child.contoso.com/OU=Staff,DC=child,DC=contoso,DC=com"


def test_a_base_dn_of_another_domain_says_to_give_that_domain_its_own_agent() -> None:
    settings = ActiveDirectorySettings.model_validate(
        {**BASE_SETTINGS, "base_dns": ["OU=Staff,DC=child,DC=contoso,DC=com"]}
    )
    context = ConnectorContext(agent="ad", data_dir=Path("unused"))
    importer = Importer(settings, _ReferringLink(), build_schema([]), context)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError) as caught:
        importer.check_bases()
    assert str(caught.value) == (
        f"base_dns: the base DN 'OU=Staff,DC=child,DC=contoso,DC=com' is not held by {settings.host}: it referred "
        f"the search to {CHILD_REFERRAL} (another domain of the forest); give that domain its own agent with host "
        "set to one of its domain controllers"
    )


class _CappedLink:
    """A DC whose LDAP policy MaxPageSize is below the re-read's 100 objects: an unpaged search gets the first
    MaxPageSize objects and sizeLimitExceeded (4), as AD answers one ("Retrieving Large Results Sets": searches
    "performed without paging are limited to returning a maximum of the first 1000 records", MaxPageSize's default).
    A stand-in: Samba applies no MaxPageSize."""

    host = "dc.example.test"

    def run(self, operation: Any) -> Any:
        return {"result": 4, "description": "sizeLimitExceeded", "message": ""}, []

    def describe(self) -> str:
        return f"domain controller {self.host}:636 (ldaps)"


def test_an_unpaged_search_cut_by_maxpagesize_names_the_policy_not_page_size() -> None:
    """Before: "set page_size at or below it", which cannot help: page_size only sizes the paged searches, which
    AD cuts into pages of at most MaxPageSize objects without an error (MS-ADTS 3.1.1.3.4.1.1). Now the stop names
    the unpaged search and the policy, and says the import took nothing from the partial answer."""
    context = ConnectorContext(agent="ad", data_dir=Path("unused"))
    importer = Importer(  # type: ignore[arg-type]
        ActiveDirectorySettings.model_validate(BASE_SETTINGS), _CappedLink(), build_schema([]), context
    )
    with pytest.raises(StopRunError) as caught:
        importer.read_by_anchor([GUID])
    message = str(caught.value)
    assert "4 sizeLimitExceeded" in message and "MaxPageSize" in message, message
    assert "set page_size" not in message and "set MaxPageSize to 100 or more" in message, message
    assert "MS-ADTS 3.1.1.3.4.1.1" not in message  # the citation belongs in the code, not in the operator's message


@pytest.mark.parametrize(
    ("result", "gone"),
    [
        ({"result": 53, "description": "unwillingToPerform", "message": ""}, True),
        ({"result": 12, "description": "unavailableCriticalExtension", "message": ""}, True),
        # AD's documented text for a discarded result set ("How LDAP server cookies are handled"), any error code
        ({"result": 2, "message": "00000057: LdapErr: DSID-0C090753, comment: Error processing control, data 0"}, True),
        (
            {"result": 1, "message": "000004DC: LdapErr: DSID-0C090A5C, comment: a successful bind must be completed"},
            False,
        ),
        ({"result": 2, "message": "protocol error"}, False),
        ({"result": 0, "message": "Error processing control"}, False),
        ({"result": 50, "message": None}, False),
    ],
)
def test_which_answers_to_a_later_page_mean_the_cookie_is_gone(result: dict[str, Any], gone: bool) -> None:
    """Pure: the codes measured on Samba (53, 12), and AD's documented comment whatever the code; nothing else."""
    assert cookie_gone(result) is gone


def test_unknown_attributes_are_those_the_schema_search_does_not_find() -> None:
    """What an export flow names is checked against the DC's schema (a misspelt cs stops the export): options
    (``;binary``) aside, an OID names itself, a name no attribute can have (``my_attr``) is none without being
    searched for, and a schema that answers nothing at all (not readable) gives no verdict."""
    asked: list[str] = []
    schema = {name.lower(): name for name in ("objectGUID", "thumbnailPhoto", "userCertificate")}

    def search(base: str, search_filter: str, attributes: list[str]) -> list[dict[str, Any]]:
        asked.append(search_filter)
        names = [schema.get(n.lower()) for n in re.findall(r"\(lDAPDisplayName=([^)]*)\)", search_filter)]
        return [{"raw_attributes": {"lDAPDisplayName": [n.encode()]}} for n in names if n]

    wanted = ["thumbnailphoto", "userCertificate;binary", "thumbnailPhotoo", "1.2.840.113556.1.4.7000", "my_attr"]
    assert unknown_attributes(search, "CN=Schema", wanted) == ["thumbnailPhotoo", "my_attr"]
    assert "my_attr" not in asked[0] and "(lDAPDisplayName=objectGUID)" in asked[0]
    assert unknown_attributes(lambda *_: [], "CN=Schema", wanted) is None  # the schema could not be read
    assert unknown_attributes(search, "", wanted) is None  # no schema partition known
