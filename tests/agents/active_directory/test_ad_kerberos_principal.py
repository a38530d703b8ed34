"""Whom a Kerberos bind without ``principal`` authenticates as, read from the keytab or the credential cache
file itself, and the name the ``dsacls`` advice gives that account when the directory cannot tell.

Why: the advice fell back to the configured account, and for a keytab without ``principal`` that was the text
"the principal of keytab /path", which an operator pasted into ``dsacls /G`` at a Windows prompt and saw fail.

The files are built here byte by byte from MIT's documented formats
(https://web.mit.edu/kerberos/krb5-devel/doc/formats/keytab_file_format.html and ccache_file_format.html)
and, where MIT krb5's tools are installed, checked against what MIT itself reads from them: ``klist`` for the
bytes, and the trace of a real GSSAPI acquisition for which principal a bind would use. No KDC is needed:
MIT names the principal in its trace before it looks for a KDC (none is configured, so it stops there).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from connector.agents.active_directory import ActiveDirectorySettings
from connector.agents.active_directory._kerberos import bound_principal, ccache_principal, keytab_principal
from connector.agents.active_directory._permissions import configured_account, dsacls_line

USER = ("svc-mvsync", "CONTOSO.COM")
SERVICE = ("host/app.contoso.com", "CONTOSO.COM")


def _keytab_entry(principal: tuple[str, str], kvno: int = 2, version: int = 2) -> bytes:
    """One keytab record (its 32-bit length, then the entry) for an AES256 key of zeros."""
    order = ">" if version == 2 else "="
    name, realm = principal
    components = [c.encode() for c in name.split("/")]

    def data(value: bytes) -> bytes:
        return struct.pack(order + "H", len(value)) + value

    count = len(components) + (1 if version == 1 else 0)
    entry = struct.pack(order + "H", count) + data(realm.encode()) + b"".join(data(c) for c in components)
    if version == 2:
        entry += struct.pack(">I", 1)  # KRB5_NT_PRINCIPAL
    entry += struct.pack(order + "IBHH", 1_700_000_000, kvno, 18, 32) + bytes(32) + struct.pack(order + "I", kvno)
    return struct.pack(order + "i", len(entry)) + entry


def _keytab(*principals: tuple[str, str], version: int = 2) -> bytes:
    return bytes([5, version]) + b"".join(_keytab_entry(p, version=version) for p in principals)


def _ccache(principal: tuple[str, str], version: int = 4) -> bytes:
    """A credential cache that holds its default principal and no ticket (what ``kinit`` starts with)."""
    order = ">" if version >= 3 else "="
    name, realm = principal
    components = [c.encode() for c in name.split("/")]

    def data(value: bytes) -> bytes:
        return struct.pack(order + "I", len(value)) + value

    head = bytes([5, version])
    if version == 4:
        head += struct.pack(">HHHii", 12, 1, 8, 0, 0)  # the KDC time offset field
    count = len(components) + (1 if version == 1 else 0)
    body = b"" if version == 1 else struct.pack(order + "I", 1)
    body += struct.pack(order + "I", count) + data(realm.encode()) + b"".join(data(c) for c in components)
    return head + body


def _settings(**overrides: Any) -> ActiveDirectorySettings:
    values: dict[str, Any] = {
        "host": "dc1.contoso.com",
        "base_dns": ["OU=Staff,DC=contoso,DC=com"],
        "auth": "kerberos",
        **overrides,
    }
    return ActiveDirectorySettings.model_validate(values)


def _written(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def test_a_keytab_s_first_principal_is_read_from_the_file(tmp_path: Path) -> None:
    keytab = _written(tmp_path / "svc.keytab", _keytab(USER, SERVICE))
    assert keytab_principal(keytab) == "svc-mvsync@CONTOSO.COM"
    # a hole (a removed entry's zeros) before the first entry is skipped, as MIT does
    hole = bytes([5, 2]) + struct.pack(">i", -40) + bytes(40) + _keytab(SERVICE)[2:]
    assert keytab_principal(_written(tmp_path / "hole.keytab", hole)) == "host/app.contoso.com@CONTOSO.COM"
    # the obsolete version 1: the host's byte order, the realm counted with the components, no name type
    old = _written(tmp_path / "v1.keytab", _keytab(USER, version=1))
    assert keytab_principal(old) == "svc-mvsync@CONTOSO.COM"


def test_a_truncated_or_foreign_keytab_gives_no_principal_and_no_traceback(tmp_path: Path) -> None:
    whole = _keytab(USER)
    first_entry_ends = 2 + 4 + struct.unpack(">i", whole[2:6])[0]
    for cut in range(len(whole)):
        got = keytab_principal(_written(tmp_path / "cut.keytab", whole[:cut]))
        assert got == (None if cut < first_entry_ends else "svc-mvsync@CONTOSO.COM"), cut
    for name, content in [
        ("empty", bytes([5, 2]) + struct.pack(">i", 0)),  # length 0: the end, no entry
        ("lying", bytes([5, 2]) + struct.pack(">i", -(2**31))),  # a hole longer than any file
        ("huge-count", bytes([5, 2]) + struct.pack(">iH", 8, 0xFFFF) + bytes(6)),
        ("not-utf8", _keytab(("\u00e9", "X")).replace("\u00e9".encode(), b"\xff\xfe")),
        ("text", b"svc-mvsync@CONTOSO.COM\n"),
    ]:
        assert keytab_principal(_written(tmp_path / name, content)) is None, name
    assert keytab_principal(tmp_path / "missing.keytab") is None
    assert keytab_principal(tmp_path) is None  # a directory


def test_a_credential_cache_file_s_default_principal_is_read(tmp_path: Path) -> None:
    for version in (4, 3, 2, 1):
        cache = _written(tmp_path / f"cc{version}", _ccache(USER, version=version))
        assert ccache_principal(f"FILE:{cache}") == "svc-mvsync@CONTOSO.COM", version
        assert ccache_principal(str(cache)) == "svc-mvsync@CONTOSO.COM", version  # a plain path is a FILE cache
    service = _written(tmp_path / "service", _ccache(SERVICE))
    assert ccache_principal(f"FILE:{service}") == "host/app.contoso.com@CONTOSO.COM"


def test_other_cache_types_and_damaged_caches_give_no_principal(tmp_path: Path) -> None:
    for name in ("KEYRING:persistent:1000", "KCM:1000", "MEMORY:mvsync", f"DIR:{tmp_path}", "API:x"):
        assert ccache_principal(name) is None, name
    whole = _ccache(USER)
    for cut in range(len(whole)):
        assert ccache_principal(str(_written(tmp_path / "cut", whole[:cut]))) is None, cut
    assert ccache_principal(str(_written(tmp_path / "keytab", _keytab(USER)))) is None  # 5, 2: no cache version
    assert ccache_principal(str(_written(tmp_path / "v9", bytes([5, 9]) + whole[2:]))) is None
    assert ccache_principal(f"FILE:{tmp_path / 'missing'}") is None


def test_the_dsacls_advice_names_a_keytab_s_user_principal(tmp_path: Path) -> None:
    """Before: ``/G "the principal of keytab /path:RPWP;..."``, which dsacls cannot take."""
    keytab = _written(tmp_path / "svc.keytab", _keytab(USER, SERVICE))
    account = configured_account(_settings(keytab=str(keytab)))
    assert account == "svc-mvsync@CONTOSO.COM"
    line = dsacls_line("OU=Staff,DC=contoso,DC=com", account, "thumbnailPhoto", "user")
    assert line == 'dsacls "OU=Staff,DC=contoso,DC=com" /I:S /G "svc-mvsync@CONTOSO.COM:RPWP;thumbnailPhoto;user"'
    cache = _written(tmp_path / "krb5cc", _ccache(USER))
    assert configured_account(_settings(ccache=f"FILE:{cache}")) == "svc-mvsync@CONTOSO.COM"


def test_a_service_principal_or_an_unreadable_source_keeps_the_configured_wording(tmp_path: Path) -> None:
    """``host/app@REALM`` is an SPN, not a user dsacls can resolve: the text says where the identity comes from."""
    service = _written(tmp_path / "host.keytab", _keytab(SERVICE, USER))
    assert configured_account(_settings(keytab=str(service))) == f"the principal of keytab {service}"
    truncated = _written(tmp_path / "cut.keytab", _keytab(USER)[:20])
    assert configured_account(_settings(keytab=str(truncated))) == f"the principal of keytab {truncated}"
    cache = _written(tmp_path / "krb5cc", _ccache(SERVICE))
    assert configured_account(_settings(ccache=f"FILE:{cache}")) == f"the principal of credential cache FILE:{cache}"
    keyring = "KEYRING:persistent:1000"
    assert configured_account(_settings(ccache=keyring)) == f"the principal of credential cache {keyring}"
    # a configured principal stays what it was, and a simple bind is named by its bind DN
    assert configured_account(_settings(keytab=str(service), principal="svc@CONTOSO.COM")) == "svc@CONTOSO.COM"
    simple = _settings(auth="simple", bind_dn="CN=svc,DC=contoso,DC=com", password="x")
    assert configured_account(simple) == "CN=svc,DC=contoso,DC=com" and bound_principal(simple) is None


def _needs(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"MIT krb5's {tool} is not installed")
    return found


def test_the_bytes_written_here_are_what_mit_reads(tmp_path: Path) -> None:
    """The test's files against MIT's own reader: ``klist -k`` lists the keytab in order, ``klist -c`` shows the
    cache's default principal."""
    klist = _needs("klist")
    keytab = _written(tmp_path / "svc.keytab", _keytab(USER, SERVICE))
    listed = subprocess.run([klist, "-k", str(keytab)], capture_output=True, text=True, timeout=60, check=True)
    entries = [line.split()[-1] for line in listed.stdout.splitlines() if re.match(r"\s*\d+ ", line)]
    assert entries == ["svc-mvsync@CONTOSO.COM", "host/app.contoso.com@CONTOSO.COM"], listed.stdout
    for version in (4, 3):
        cache = _written(tmp_path / f"cc{version}", _ccache(SERVICE, version=version))
        shown = subprocess.run([klist, "-c", f"FILE:{cache}"], capture_output=True, text=True, timeout=60)
        assert "Default principal: host/app.contoso.com@CONTOSO.COM" in shown.stdout, shown.stdout + shown.stderr


_ACQUIRE = """
import sys, gssapi
store = {"client_keytab": "FILE:" + sys.argv[1], "ccache": sys.argv[2]}
try:
    gssapi.Credentials(usage="initiate", store=store)
except gssapi.exceptions.GSSError:
    pass  # no KDC is configured: the trace has named the principal by then
"""


def _mit_choice(tmp_path: Path, keytab: Path, ccache: str) -> str | None:
    """The principal MIT krb5 asks initial tickets for, from its trace, acquiring as the agent does (_store)."""
    pytest.importorskip("gssapi")
    config = _written(tmp_path / "krb5.conf", b"[libdefaults]\n dns_lookup_kdc = false\n dns_lookup_realm = false\n")
    trace = tmp_path / "trace.log"
    env = {**os.environ, "KRB5_CONFIG": str(config), "KRB5_TRACE": str(trace)}
    subprocess.run([sys.executable, "-c", _ACQUIRE, str(keytab), ccache], env=env, timeout=60, check=True)
    found = re.search(r"Getting initial credentials for (\S+)", trace.read_text())
    trace.unlink()
    return found.group(1) if found else None


def test_the_principal_read_is_the_one_mit_krb5_binds_as(tmp_path: Path) -> None:
    """The keytab's first principal, or the default principal of a cache file that exists (MIT's order)."""
    keytab = _written(tmp_path / "two.keytab", _keytab(USER, SERVICE))
    memory = "MEMORY:mvsync-test"
    assert _mit_choice(tmp_path, keytab, memory) == "svc-mvsync@CONTOSO.COM"
    assert bound_principal(_settings(keytab=str(keytab), ccache=memory)) == "svc-mvsync@CONTOSO.COM"
    reversed_keytab = _written(tmp_path / "reversed.keytab", _keytab(SERVICE, USER))
    assert _mit_choice(tmp_path, reversed_keytab, memory) == "host/app.contoso.com@CONTOSO.COM"
    assert bound_principal(_settings(keytab=str(reversed_keytab))) == "host/app.contoso.com@CONTOSO.COM"
    cache = f"FILE:{_written(tmp_path / 'krb5cc', _ccache(SERVICE))}"
    assert _mit_choice(tmp_path, keytab, cache) == "host/app.contoso.com@CONTOSO.COM"
    assert bound_principal(_settings(keytab=str(keytab), ccache=cache)) == "host/app.contoso.com@CONTOSO.COM"
    missing = f"FILE:{tmp_path / 'not-yet'}"
    assert _mit_choice(tmp_path, keytab, missing) == "svc-mvsync@CONTOSO.COM"
    assert bound_principal(_settings(keytab=str(keytab), ccache=missing)) == "svc-mvsync@CONTOSO.COM"


def test_a_cache_that_cannot_be_read_here_leaves_the_principal_unknown(tmp_path: Path) -> None:
    """MIT would take the cache's principal before the keytab's; when that cache is a kernel keyring or KCM, or
    a file that does not parse, the keytab's first principal would be a guess, and a wrong name in a grant is
    worse than none."""
    keytab = _written(tmp_path / "svc.keytab", _keytab(USER))
    for cache in ("KEYRING:persistent:1000", "KCM:1000", f"FILE:{_written(tmp_path / 'damaged', b'not a cache')}"):
        settings = _settings(keytab=str(keytab), ccache=cache)
        assert bound_principal(settings) is None, cache
        assert configured_account(settings) == f"the principal of keytab {keytab}", cache


def test_without_keytab_or_ccache_the_cache_krb5ccname_names_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No keytab, no ``ccache``: MIT krb5 binds with the cache KRB5CCNAME names, so the dsacls advice names its
    default principal. Before: "the Kerberos identity of this process", which ``dsacls /G`` cannot take."""
    cache = _written(tmp_path / "krb5cc", _ccache(USER))
    for name in (f"FILE:{cache}", str(cache)):
        monkeypatch.setenv("KRB5CCNAME", name)
        assert bound_principal(_settings()) == "svc-mvsync@CONTOSO.COM", name
        account = configured_account(_settings())
        assert account == "svc-mvsync@CONTOSO.COM", name
        line = dsacls_line("OU=Staff,DC=contoso,DC=com", account, "thumbnailPhoto", "user")
        assert '/G "svc-mvsync@CONTOSO.COM:RPWP;thumbnailPhoto;user"' in line, line
    # a keytab (tickets in the agent's own MEMORY: cache) or a ccache setting decides instead of KRB5CCNAME
    keytab = _written(tmp_path / "svc.keytab", _keytab(("other", "CONTOSO.COM")))
    assert bound_principal(_settings(keytab=str(keytab))) == "other@CONTOSO.COM"
    named = _written(tmp_path / "named", _ccache(("named", "CONTOSO.COM")))
    assert bound_principal(_settings(ccache=f"FILE:{named}")) == "named@CONTOSO.COM"
    # a ccache setting that names no readable file yet (k5start has not filled it) is still the bind's cache
    for ccache in (f"FILE:{tmp_path / 'not-yet'}", "MEMORY:mvsync"):
        assert bound_principal(_settings(ccache=ccache)) is None, ccache


def test_krb5ccname_unset_or_unreadable_keeps_the_process_wording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unset: MIT's default cache depends on krb5.conf's default_ccache_name and the uid, not guessed here. A
    cache that is no file (KEYRING:, KCM:, DIR:), a file not there or damaged, or a service principal: as before."""
    process = "the Kerberos identity of this process"
    monkeypatch.delenv("KRB5CCNAME", raising=False)
    assert bound_principal(_settings()) is None and configured_account(_settings()) == process
    service = _written(tmp_path / "service", _ccache(SERVICE))
    damaged = _written(tmp_path / "damaged", b"not a cache")
    for name in (
        "KEYRING:persistent:1000",
        "KCM:1000",
        f"DIR:{tmp_path}",
        f"FILE:{tmp_path / 'missing'}",
        str(damaged),
    ):
        monkeypatch.setenv("KRB5CCNAME", name)
        assert bound_principal(_settings()) is None, name
        assert configured_account(_settings()) == process, name
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{service}")
    assert bound_principal(_settings()) == "host/app.contoso.com@CONTOSO.COM"
    assert configured_account(_settings()) == process  # an SPN, which dsacls cannot resolve


def test_on_windows_the_process_identity_is_not_read_from_krb5ccname(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSPI binds as the account the process runs as; KRB5CCNAME (perhaps left by MIT's Windows tools) is not it."""
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{_written(tmp_path / 'krb5cc', _ccache(USER))}")
    settings = _settings()
    monkeypatch.setattr(sys, "platform", "win32")
    assert bound_principal(settings) is None
    assert configured_account(settings) == "the Kerberos identity of this process"


def test_mit_krb5_reads_the_cache_krb5ccname_names(tmp_path: Path) -> None:
    """MIT's own default cache (``klist`` with no ``-c``, as GSSAPI without a ``ccache`` store) is the one
    KRB5CCNAME names: the cache ``bound_principal`` reads."""
    klist = _needs("klist")
    cache = _written(tmp_path / "krb5cc", _ccache(USER))
    env = {**os.environ, "KRB5CCNAME": f"FILE:{cache}"}
    shown = subprocess.run([klist], capture_output=True, text=True, timeout=60, env=env)
    assert f"Ticket cache: FILE:{cache}" in shown.stdout, shown.stdout + shown.stderr
    assert "Default principal: svc-mvsync@CONTOSO.COM" in shown.stdout, shown.stdout + shown.stderr
