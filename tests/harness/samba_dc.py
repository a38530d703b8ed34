"""A throwaway Samba Active Directory domain controller on loopback, for tests and benchmarks.

Why a real DC: the Active Directory agent's promises (paged search, DirSync, tombstones, the
102,400-byte ``thumbnailPhoto`` limit, result codes, TLS validation) only mean something against a
server that has the real AD schema and controls. Samba 4 in the ``active directory domain
controller`` role has them, starts in about a second once provisioned, and needs nothing outside
one directory.

What :func:`ensure_samba` does, each step only when needed:

1. install the Debian packages (root + apt only; package scripts are kept from starting system
   daemons with a ``policy-rc.d`` that answers 101);
2. provision a domain into ``directory`` (``samba-tool domain provision``, no DNS, loopback only);
3. create a private CA and a server certificate whose SANs name ``localhost``, the DC's FQDN and
   the loopback address, so clients can keep full certificate validation on;
4. start ``samba`` with the LDAP and KDC services, bound to one loopback address, allowing SASL
   (Kerberos) binds over TLS (``allow_sasl_over_tls``: ldap3 cannot sign or seal, and a Windows
   DC's signing requirement is met by TLS too), and write a ``krb5.conf`` that points at that KDC;
5. wait for a real LDAPS simple bind with the certificate validated against that CA.

:func:`kerberos_account` then makes a least-privilege service account with a keytab, as an
administrator would for mvsync (``samba-tool domain exportkeytab`` here, ``ktpass`` or a gMSA's
keytab on a real domain).

A server already running from the same directory is reused (its pid *and* kernel start time are
recorded, so a recycled pid is never mistaken for it, and :func:`stop_samba` never signals
anything else). When the ``AD_*`` environment variables describe an existing directory
(``AD_HOST``, ``AD_BASE_DN``, ``AD_BIND_DN``, ``AD_PASSWORD``, optional ``AD_LDAPS_PORT``,
``AD_LDAP_PORT`` and ``AD_CA_CERT``), nothing is installed or started and those are returned.

Where Samba cannot run (not root, not Linux, packages missing without apt, start failure)
:class:`SambaUnavailable` is raised with the reason; test fixtures turn it into a skip, or into a
failure when servers are required.

It lives under ``tests/`` because it is test-only and POSIX-only (root, apt, ``fcntl``, signals,
``/proc``); the benchmarks that start a DC load it from a source checkout
(``connector.bench._harness``). The directory-population helpers it re-exports (:func:`connect`,
:func:`ensure_ou`, :func:`create_users`, :func:`delete_subtree`, :class:`ADSettings`) are portable
and live in the package (``connector.demo.ad``), since ``mvsync demo`` uses them too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from connector.config import ConfigError
from connector.demo.ad import (
    LDAP_PORT,
    LDAPS_PORT,
    ADSettings,
    UserSpec,
    connect,
    create_users,
    delete_subtree,
    ensure_ou,
    settings_from_env,
)

__all__ = [
    "ADSettings",
    "KerberosAccount",
    "SambaUnavailable",
    "ServicePrincipal",
    "UserSpec",
    "client_site",
    "connect",
    "create_users",
    "dc_fqdn",
    "delete_subtree",
    "ensure_ou",
    "ensure_samba",
    "grant_write",
    "kdc_running",
    "kerberos_account",
    "samba_lease",
    "service_principal",
    "settings_from_env",
    "stop_samba",
]

#: Debian packages the DC needs (``ldap-utils`` gives tests ``ldapmodify`` for the LDIF check).
PACKAGES = (
    "samba",
    "samba-ad-provision",
    "samba-dsdb-modules",
    "samba-vfs-modules",
    "winbind",
    "ldap-utils",
)
SAMBA_BINARY = "/usr/sbin/samba"
#: Not 127.0.0.1: a developer's own slapd or another DC there would clash with Samba's fixed ports.
DEFAULT_HOST = "127.0.83.1"
DEFAULT_REALM = "MVSYNC.TEST"
DEFAULT_DOMAIN = "MVSYNC"
DEFAULT_HOSTNAME = "dc1"
#: Throwaway credential of a throwaway domain (it must satisfy AD's complexity rules).
DEFAULT_PASSWORD = "Mvsync-Test-Passw0rd1"
_MARKER = ".mvsync-samba-dir"  # proves a directory was created here (so it may be wiped)
KDC_PORT = 88
#: schemaIDGUID of the ``user`` class: delegations name it so they apply to user objects only.
USER_CLASS_GUID = "bf967aba-0de6-11d0-a285-00aa003049e2"


class SambaUnavailable(RuntimeError):
    """Samba cannot run on this machine; the message says why (shown as the skip reason)."""


# ------------------------------------------------------------------------------------- /proc
def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (parsed after the last ')': the command name may hold spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if fields else None  # field 22: start time in clock ticks since boot


def _is_live_samba(pid: int, session: int | None = None) -> bool:
    """A running (not zombie) samba process, optionally in the given session."""
    fields = _stat_fields(pid)
    if not fields or fields[0] == "Z":
        return False
    try:
        if os.readlink(f"/proc/{pid}/exe") != SAMBA_BINARY:
            return False
    except OSError:
        return False
    return session is None or fields[3] == str(session)  # field 6: session id


def _session_members(session: int) -> list[int]:
    """Samba processes of one session: ``samba -D`` calls setsid, so the master's pid is the sid."""
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_live_samba(int(p.name), session)]


# ------------------------------------------------------------------------------------- the DC
@dataclass
class _DC:
    """One DC's directory layout; every path the server uses lives under ``directory``."""

    directory: Path
    host: str
    realm: str
    domain: str
    hostname: str
    password: str = field(repr=False)
    allow_plain_ldap: bool = False

    @property
    def samba_dir(self) -> Path:
        return self.directory / "samba"

    @property
    def conf(self) -> Path:
        return self.samba_dir / "etc" / "smb.conf"

    @property
    def tls_dir(self) -> Path:
        return self.directory / "tls"

    @property
    def pid_record(self) -> Path:
        return self.directory / "run" / "harness.pid"

    @property
    def base_dn(self) -> str:
        return ",".join(f"DC={part}" for part in self.realm.lower().split("."))

    @property
    def fqdn(self) -> str:
        return f"{self.hostname}.{self.realm.lower()}"

    def settings(self, pid: int) -> ADSettings:
        return ADSettings(
            host=self.host,
            base_dn=self.base_dn,
            bind_dn=f"CN=Administrator,CN=Users,{self.base_dn}",
            password=self.password,
            ca_cert=self.tls_dir / "ca.pem",
            realm=self.realm,
            directory=self.directory,
            pid=pid,
        )

    def identity(self) -> str:
        """What a provision depends on; the password only as a hash so no secret is written."""
        digest = hashlib.sha256(self.password.encode()).hexdigest()
        return json.dumps([self.realm, self.domain, self.hostname, digest])

    # -- process ----------------------------------------------------------------------------
    def recorded_pid(self) -> int | None:
        """The samba master this harness started from ``directory``, if it still runs."""
        try:
            pid_text, start = self.pid_record.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        if _start_time(pid) == start and _is_live_samba(pid):
            return pid
        return None

    def stop(self, timeout: float = 20.0) -> bool:
        """Stop the recorded master and its workers; True if something was stopped."""
        pid = self.recorded_pid()
        if pid is None:
            self.pid_record.unlink(missing_ok=True)
            return False
        members = _session_members(pid)
        os.kill(pid, signal.SIGTERM)  # the master terminates its workers
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            members = [m for m in members if _is_live_samba(m, pid)]
            if not members:
                break
            time.sleep(0.1)
        for member in members:
            if _is_live_samba(member, pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member, signal.SIGKILL)
        self.pid_record.unlink(missing_ok=True)
        (self.directory / "run" / "samba.pid").unlink(missing_ok=True)
        return True

    def start(self, timeout: float) -> ADSettings:
        pid = self.recorded_pid()
        if pid is not None:
            return self.settings(pid)
        for port in (LDAP_PORT, LDAPS_PORT, KDC_PORT):
            if _port_open(self.host, port):
                msg = (
                    f"{self.host}:{port} is already in use by another process; "
                    "choose another loopback address (MVSYNC_SAMBA_HOST)"
                )
                raise SambaUnavailable(msg)
        self.provision()
        self.make_tls()
        self.write_conf()
        samba_pid_file = self.directory / "run" / "samba.pid"
        samba_pid_file.unlink(missing_ok=True)
        with open(self.directory / "log" / "samba.stdout", "ab") as out:
            # -D daemonizes (and calls setsid); the daemon must not inherit our lock fd.
            started = subprocess.run(
                [SAMBA_BINARY, "-s", str(self.conf), "-D"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
                close_fds=True,
            )
        if started.returncode != 0:
            raise SambaUnavailable(f"samba failed to start (exit {started.returncode}); see {self._log_hint()}")
        pid = _wait_for(lambda: _read_pid(samba_pid_file), 10.0)
        if pid is None:
            raise SambaUnavailable(f"samba did not stay up; see {self._log_hint()}")
        start = _start_time(pid)
        self.pid_record.write_text(f"{pid} {start}\n")
        settings = self.settings(pid)
        error = _wait_for_bind(settings, timeout)
        if error is not None:
            self.stop()
            raise SambaUnavailable(
                f"samba did not answer LDAPS binds within {timeout:.0f}s ({error}); see {self._log_hint()}"
            )
        return settings

    def _log_hint(self) -> str:
        return str(self.directory / "log" / "samba.log")

    # -- provision, TLS, config ---------------------------------------------------------------
    def provision(self) -> None:
        stamp = self.directory / ".provisioned"
        if stamp.is_file():
            if stamp.read_text() != self.identity():
                msg = (
                    f"{self.directory} was provisioned with another realm, domain, host name or password; "
                    "stop it and remove the directory (stop_samba(purge=True)) to provision again"
                )
                raise SambaUnavailable(msg)
            return
        if self.samba_dir.exists():
            shutil.rmtree(self.samba_dir)
        for sub in ("run", "log"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        log_file = self.directory / "provision.log"
        with open(log_file, "wb") as out:
            done = subprocess.run(
                [
                    "samba-tool",
                    "domain",
                    "provision",
                    f"--targetdir={self.samba_dir}",
                    f"--realm={self.realm}",
                    f"--domain={self.domain}",
                    "--server-role=dc",
                    "--dns-backend=NONE",
                    f"--host-name={self.hostname}",
                    f"--host-ip={self.host}",
                    "--use-rfc2307",
                    f"--option=interfaces={self.host}/8",
                    "--option=bind interfaces only=yes",
                    # samba-tool takes the password only on its command line (or a prompt); it is a
                    # throwaway test credential, and only root can read another root process's argv
                    f"--adminpass={self.password}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if done.returncode != 0:
            tail = log_file.read_text(errors="replace").splitlines()[-5:]
            raise SambaUnavailable(f"samba-tool domain provision failed ({log_file}): {' | '.join(tail)}")
        stamp.write_text(self.identity())
        stamp.chmod(0o600)

    def make_tls(self) -> None:
        """Own CA + server certificate (Samba's self-made one has no SAN, so validation by IP fails)."""
        names = f"{self.host} {self.fqdn}"
        san_file = self.tls_dir / ".san"
        if san_file.is_file() and san_file.read_text() == names and (self.tls_dir / "key.pem").is_file():
            return
        import trustme  # a project dependency; imported here so plain settings use never needs it

        self.tls_dir.mkdir(parents=True, exist_ok=True)
        self.tls_dir.chmod(0o700)
        ca = trustme.CA(organization_name="mvsync test", key_type=trustme.KeyType.RSA)
        cert = ca.issue_cert("localhost", self.fqdn, self.host, key_type=trustme.KeyType.RSA)
        ca.cert_pem.write_to_path(str(self.tls_dir / "ca.pem"))
        cert.cert_chain_pems[0].write_to_path(str(self.tls_dir / "cert.pem"))
        key = self.tls_dir / "key.pem"
        key.touch(mode=0o600)
        cert.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)  # samba refuses a key file others can read
        san_file.write_text(names)

    def write_conf(self) -> None:
        d = self.directory
        s = self.samba_dir
        for sub in (d / "run", d / "log", s / "cache", s / "lock", s / "usershares"):
            sub.mkdir(parents=True, exist_ok=True)
        conf = f"""# written by tests.harness.samba_dc on every start
[global]
\tnetbios name = {self.hostname.upper()}
\tworkgroup = {self.domain}
\trealm = {self.realm}
\tserver role = active directory domain controller
\tidmap_ldb:use rfc2307 = yes
\tinterfaces = {self.host}/8
\tbind interfaces only = yes
\tdisable netbios = yes
\tserver services = ldap, kdc
\tldap server require strong auth = {"no" if self.allow_plain_ldap else "allow_sasl_over_tls"}
\ttls enabled = yes
\ttls keyfile = {self.tls_dir / "key.pem"}
\ttls certfile = {self.tls_dir / "cert.pem"}
\ttls cafile = {self.tls_dir / "ca.pem"}
\tldb:nosync = true
\tprivate dir = {s / "private"}
\tstate directory = {s / "state"}
\tcache directory = {s / "cache"}
\tlock directory = {s / "lock"}
\tpid directory = {d / "run"}
\tncalrpc dir = {d / "run" / "ncalrpc"}
\twinbindd socket directory = {d / "run" / "winbindd"}
\tntp signd socket directory = {d / "run" / "ntp_signd"}
\tbinddns dir = {s / "bind-dns"}
\tusershare path = {s / "usershares"}
\tlog file = {d / "log" / "samba.log"}
\tlogging = file
\tlog level = 1
\tmax log size = 10000
\tpanic action =
"""
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text(conf)
        tmp.replace(self.conf)
        self.write_krb5_conf()

    @property
    def krb5_conf(self) -> Path:
        return self.directory / "kerberos" / "krb5.conf"

    def write_krb5_conf(self, path: Path | None = None, *, kdc_port: int = KDC_PORT) -> Path:
        """A client krb5.conf for this realm: the KDC by address, no DNS (everything is on loopback)."""
        target = path or self.krb5_conf
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(krb5_conf_text(self.realm, self.host, kdc_port))
        return target


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_live_samba(pid) else None


def _wait_for(probe: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None or time.monotonic() >= deadline:
            return value
        time.sleep(0.1)


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
        return True
    return False


def _wait_for_bind(settings: ADSettings, timeout: float) -> str | None:
    """None once an LDAPS bind with full certificate validation works, else the last error."""
    from ldap3.core.exceptions import LDAPException

    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        try:
            conn = connect(settings)
        except (LDAPException, OSError) as exc:
            last = type(exc).__name__
            time.sleep(0.2)
            continue
        conn.unbind()
        return None
    return last


def krb5_conf_text(realm: str, host: str, kdc_port: int = KDC_PORT) -> str:
    """krb5.conf naming the KDC by address: no DNS, no reverse lookups, TCP (loopback has no MTU issue)."""
    domain = realm.lower()
    return f"""[libdefaults]
  default_realm = {realm}
  dns_lookup_kdc = false
  dns_lookup_realm = false
  dns_canonicalize_hostname = false
  rdns = false
  udp_preference_limit = 1
[realms]
  {realm} = {{
    kdc = {host}:{kdc_port}
  }}
[domain_realm]
  .{domain} = {realm}
  {domain} = {realm}
"""


# ------------------------------------------------------------------------------------- Kerberos
@dataclass(frozen=True)
class KerberosAccount:
    """A service account that binds with a keytab: what the agent's ``auth = "kerberos"`` needs."""

    name: str
    principal: str
    dn: str
    sid: str
    keytab: Path
    krb5_conf: Path
    #: The DC's FQDN, i.e. the host part of its ``ldap/<fqdn>`` SPN (the agent's ``kerberos_host``).
    spn_host: str
    netbios_domain: str


def _dc_of(settings: ADSettings) -> _DC:
    if settings.directory is None:
        msg = "an external directory (AD_*): create the service account and its keytab there yourself"
        raise SambaUnavailable(msg)
    return _DC(
        settings.directory,
        settings.host,
        settings.realm or DEFAULT_REALM,
        DEFAULT_DOMAIN,
        DEFAULT_HOSTNAME,
        settings.password,
    )


def dc_fqdn(settings: ADSettings) -> str:
    """The harness DC's DNS name (``dc1.<realm>``): what its certificate names, its SRV records would name,
    and the host part of its ``ldap/<fqdn>`` SPN."""
    return _dc_of(settings).fqdn


def _samba_tool(dc: _DC, *args: str, database: bool = True) -> subprocess.CompletedProcess[str]:
    """samba-tool against the DC's own database (works while samba runs: ldb locks it)."""
    where = ["-H", str(dc.samba_dir / "private" / "sam.ldb")] if database else []
    return subprocess.run(
        ["samba-tool", *args, "-s", str(dc.conf), *where],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )


def _require(done: subprocess.CompletedProcess[str], what: str) -> None:
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise SambaUnavailable(f"{what} failed: {tail}")


def format_sid(raw: bytes) -> str:
    """A binary SID in its ``S-1-5-21-...`` text form (the form SDDL and dsacls use)."""
    from ldap3.protocol.formatters.formatters import format_sid as _format

    return str(_format(raw))


def kerberos_account(settings: ADSettings, name: str = "svc-mvsync") -> KerberosAccount:
    """A plain user ``name`` (no rights beyond Authenticated Users' read) with a fresh keytab.

    Also gives the DC the ``ldap/<fqdn>`` SPN real DCs register (samba's spnupdate never runs here,
    and without it the KDC answers "Server not found in Kerberos database"). Idempotent.
    """
    dc = _dc_of(settings)
    keytab = dc.directory / "kerberos" / f"{name}.keytab"
    with _locked(dc.directory):
        if _samba_tool(dc, "user", "show", name).returncode != 0:
            _require(_samba_tool(dc, "user", "create", name, "--random-password"), f"samba-tool user create {name}")
        spn = f"ldap/{dc.fqdn}"
        if spn not in _samba_tool(dc, "spn", "list", f"{dc.hostname.upper()}$").stdout:
            _require(_samba_tool(dc, "spn", "add", spn, f"{dc.hostname.upper()}$"), f"samba-tool spn add {spn}")
        principal = f"{name}@{dc.realm}"
        _export_keytab(dc, keytab, principal)
        dc.write_krb5_conf()
    conn = connect(settings)
    try:
        conn.search(settings.base_dn, f"(sAMAccountName={name})", attributes=["objectSid"])
        entry = conn.response[0]
        dn, sid = entry["dn"], format_sid(entry["raw_attributes"]["objectSid"][0])
    finally:
        conn.unbind()
    return KerberosAccount(name, principal, dn, sid, keytab, dc.krb5_conf, dc.fqdn, dc.domain)


@dataclass(frozen=True)
class ServicePrincipal:
    """A web service's Kerberos identity: ``HTTP/<host>`` on an account, and the service's keytab."""

    account: str
    #: ``HTTP/<host>``: what a client asks the KDC a ticket for.
    spn: str
    host: str
    #: The keys of ``spn`` only (what the service accepts tickets with; no client can use it).
    keytab: Path
    krb5_conf: Path


def service_principal(
    settings: ADSettings, host: str, account: str = "ews-http", service: str = "HTTP"
) -> ServicePrincipal:
    """Register ``<service>/<host>`` on a fresh ``account`` and export that SPN's keys, as for an IIS site.

    What an Exchange administrator does for Kerberos to a load-balanced EWS namespace (an
    alternate service account holding ``HTTP/mail.contoso.com``): ``samba-tool user add`` +
    ``spn add`` + ``domain exportkeytab --principal=<spn>`` here, ``setspn -S`` + ``ktpass`` on
    Windows. Idempotent; the keytab is written afresh each time.
    """
    dc = _dc_of(settings)
    spn = f"{service}/{host}"
    keytab = dc.directory / "kerberos" / f"{account}.keytab"
    with _locked(dc.directory):
        if _samba_tool(dc, "user", "show", account).returncode != 0:
            created = _samba_tool(dc, "user", "create", account, "--random-password")
            _require(created, f"samba-tool user create {account}")
        if spn not in _samba_tool(dc, "spn", "list", account).stdout:
            _require(_samba_tool(dc, "spn", "add", spn, account), f"samba-tool spn add {spn}")
        _export_keytab(dc, keytab, f"{spn}@{dc.realm}")
        dc.write_krb5_conf()
    return ServicePrincipal(account, spn, host, keytab, dc.krb5_conf)


def _export_keytab(dc: _DC, keytab: Path, principal: str) -> None:
    """The keys of ``principal`` into ``keytab`` (owner-only), replacing what it held.

    Why a new file renamed over the old one: exportkeytab appends (a stale key would linger), and
    another session sharing the DC may be binding with (or serving) that keytab right now; deleted
    first, it was missing for the second the export took.
    """
    keytab.parent.mkdir(parents=True, exist_ok=True)
    fresh = keytab.with_name(f"{keytab.name}.{os.getpid()}")
    fresh.unlink(missing_ok=True)
    _require(
        _samba_tool(dc, "domain", "exportkeytab", str(fresh), f"--principal={principal}", database=False),
        f"samba-tool domain exportkeytab --principal={principal}",
    )
    fresh.chmod(0o600)
    fresh.replace(keytab)


def grant_write(settings: ADSettings, account: KerberosAccount, ou_dn: str, attribute: str) -> None:
    """Delegate "write ``attribute`` of user objects below ``ou_dn``" to ``account``.

    The same grant as ``dsacls OU /I:S /G "DOMAIN\\account:WP;attribute;user"``, as an inherit-only
    object ACE on the OU; Samba propagates it to the users below.
    """
    guid = _schema_guid(settings, attribute)
    dc = _dc_of(settings)
    sddl = f"(OA;CIIO;WP;{guid};{USER_CLASS_GUID};{account.sid})"
    _require(_samba_tool(dc, "dsacl", "set", f"--objectdn={ou_dn}", f"--sddl={sddl}"), f"samba-tool dsacl set {sddl}")


def deny_write(settings: ADSettings, account: KerberosAccount, object_dn: str, attribute: str) -> None:
    """Deny ``account`` writing ``attribute`` on the object ``object_dn`` itself, whatever its OU grants.

    What a protected account (adminCount = 1, inheritance off) or an explicit deny looks like to the
    account: the OU's grant reaches the object's neighbours, not the object.
    """
    sddl = f"(OD;;WP;{_schema_guid(settings, attribute)};;{account.sid})"
    done = _samba_tool(_dc_of(settings), "dsacl", "set", f"--objectdn={object_dn}", f"--sddl={sddl}")
    _require(done, f"samba-tool dsacl set {sddl}")


def allow_write(settings: ADSettings, account: KerberosAccount, object_dn: str, attribute: str) -> None:
    """Let ``account`` write ``attribute`` on the object ``object_dn`` itself (an explicit allow ACE on it).

    What ``dsacls OBJECT /G "DOMAIN\\account:WP;attribute"`` grants. An explicit ACE comes before the
    inherited ones in the DACL's order ("Order of ACEs in a DACL", Microsoft Learn), so it holds whatever the
    object's OU grants or denies.
    """
    sddl = f"(OA;;WP;{_schema_guid(settings, attribute)};;{account.sid})"
    done = _samba_tool(_dc_of(settings), "dsacl", "set", f"--objectdn={object_dn}", f"--sddl={sddl}")
    _require(done, f"samba-tool dsacl set {sddl}")


def withdraw_write(settings: ADSettings, account: KerberosAccount, ou_dn: str, attribute: str) -> None:
    """Take "write ``attribute`` of user objects below ``ou_dn``" away from ``account`` (what ``grant_write``
    gave): an inherit-only deny ACE on the OU, which Samba propagates to the users below.

    Why a deny rather than the grant removed: this samba-tool has no ``dsacl delete``; ``dsacl set`` puts
    the new ACE first, and a deny that comes before an allow for the same right wins (the DACL is read in
    order: "How DACLs Control Access to an Object", Microsoft Learn), so the account may write no one there.
    """
    sddl = f"(OD;CIIO;WP;{_schema_guid(settings, attribute)};{USER_CLASS_GUID};{account.sid})"
    done = _samba_tool(_dc_of(settings), "dsacl", "set", f"--objectdn={ou_dn}", f"--sddl={sddl}")
    _require(done, f"samba-tool dsacl set {sddl}")


def _schema_guid(settings: ADSettings, attribute: str) -> str:
    """The schemaIDGUID of ``attribute``, as SDDL object ACEs name it."""
    conn = connect(settings)
    try:
        conn.search(
            f"CN=Schema,CN=Configuration,{settings.base_dn}",
            f"(lDAPDisplayName={attribute})",
            attributes=["schemaIDGUID"],
        )
        return str(uuid.UUID(bytes_le=conn.response[0]["raw_attributes"]["schemaIDGUID"][0]))
    finally:
        conn.unbind()


@contextlib.contextmanager
def client_site(settings: ADSettings, site: str, subnet: str = "127.0.0.0/8") -> Iterator[str]:
    """An AD site ``site`` holding the subnet ``subnet`` (by default every loopback address, so every test
    client), for the block: the DC then names ``site`` as the client's site (ClientSiteName) in its answers
    to LDAP pings, while it stays in Default-First-Site-Name itself. Both are removed after the block (other
    tests share the DC), as an administrator would do with ``New-ADReplicationSite`` and
    ``New-ADReplicationSubnet`` (``samba-tool sites create``, ``samba-tool sites subnet create`` here)."""
    dc = _dc_of(settings)
    _require(_samba_tool(dc, "sites", "create", site), f"samba-tool sites create {site}")
    try:
        _require(_samba_tool(dc, "sites", "subnet", "create", subnet, site), f"samba-tool sites subnet create {subnet}")
        try:
            yield site
        finally:
            _require(_samba_tool(dc, "sites", "subnet", "remove", subnet), f"samba-tool sites subnet remove {subnet}")
    finally:
        _require(_samba_tool(dc, "sites", "remove", site), f"samba-tool sites remove {site}")


def kdc_running(settings: ADSettings) -> bool:
    """Whether the DC answers on the Kerberos port (a DC started by an older harness had no KDC)."""
    return _port_open(settings.host, KDC_PORT)


# ------------------------------------------------------------------------------------- packages
def _missing_packages() -> list[str]:
    missing = []
    for package in PACKAGES:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
        )
        if "install ok installed" not in done.stdout:
            missing.append(package)
    return missing


def ensure_packages(log: IO[str] | None = None) -> None:
    """Install the Debian packages if missing; SambaUnavailable when that is not possible here."""
    if shutil.which("dpkg-query") is None:
        if shutil.which("samba") and shutil.which("samba-tool"):
            return  # not Debian, but Samba is there: try it
        raise SambaUnavailable("Samba AD DC is not installed and this is not a Debian system (no dpkg)")
    missing = _missing_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise SambaUnavailable(f"Samba AD DC packages missing ({' '.join(missing)}) and not root to install them")
    if shutil.which("apt-get") is None:
        raise SambaUnavailable(f"Samba AD DC packages missing ({' '.join(missing)}) and no apt-get")
    # Package scripts would start smbd/nmbd/winbindd with the system config; policy-rc.d's exit
    # code 101 ("action forbidden") stops that. Keep an existing policy, add ours only for the install.
    policy = Path("/usr/sbin/policy-rc.d")
    added_policy = not policy.exists()
    if added_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    out = log if log is not None else subprocess.DEVNULL
    try:
        for cmd in (
            ["apt-get", "update", "-q"],
            [
                "apt-get",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "-o",
                "Dpkg::Options::=--force-confold",
                *missing,
            ],
        ):
            if subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, check=False).returncode:
                raise SambaUnavailable(f"{' '.join(cmd[:2])} failed while installing {' '.join(missing)}")
    finally:
        if added_policy:
            policy.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------- public API
def _default_directory(host: str) -> Path:
    return Path(tempfile.gettempdir()) / f"mvsync-samba-{host}"


def _dc(directory: Path | None, host: str | None, password: str | None, allow_plain_ldap: bool) -> _DC:
    """The DC at ``host`` (default: MVSYNC_SAMBA_HOST's) from ``directory`` (default: MVSYNC_SAMBA_DIR for the DC
    of MVSYNC_SAMBA_HOST, else one per address). Why MVSYNC_SAMBA_DIR only for that DC: a second DC at an address
    of its own (test_ad_other_dc) was given the session DC's directory, so it was that DC, said to listen where
    nothing did."""
    session_host = os.environ.get("MVSYNC_SAMBA_HOST") or DEFAULT_HOST
    host = host or session_host
    if not host.startswith("127."):
        raise SambaUnavailable(f"the test DC binds loopback addresses only (127.x.y.z), not {host!r}")
    session_directory = os.environ.get("MVSYNC_SAMBA_DIR") if host == session_host else None
    directory = Path(directory or session_directory or _default_directory(host)).resolve()
    if str(directory) in ("/", "/tmp", "/usr", "/etc", "/var", "/root", "/home"):
        raise SambaUnavailable(f"refusing to use {directory} as the DC directory")
    return _DC(
        directory,
        host,
        DEFAULT_REALM,
        DEFAULT_DOMAIN,
        DEFAULT_HOSTNAME,
        password or DEFAULT_PASSWORD,
        allow_plain_ldap,
    )


@contextlib.contextmanager
def _locked(directory: Path, mode: int = fcntl.LOCK_EX) -> Iterator[None]:
    """Serialise start/stop on one directory across processes (test sessions, benchmarks)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{directory}.lock", "a") as handle:
        fcntl.flock(handle, mode)
        yield


def ensure_samba(
    directory: Path | None = None,
    *,
    host: str | None = None,
    password: str | None = None,
    allow_plain_ldap: bool = False,
    use_env: bool = True,
    timeout: float = 90.0,
) -> ADSettings:
    """Settings of a running DC: the ``AD_*`` one if described, else one started (or reused) here.

    ``allow_plain_ldap`` lets port 389 accept simple binds without TLS (tests of the agent's own
    refusal need a server that would allow it). A DC that already runs from ``directory`` is
    reused as it is.
    """
    if use_env:
        external = settings_from_env()
        if external is not None:
            return external
    if not Path("/proc/self/stat").exists():
        raise SambaUnavailable("the Samba harness needs Linux (/proc)")
    if os.geteuid() != 0:
        raise SambaUnavailable("a Samba AD DC must run as root (and the harness never asks for sudo)")
    dc = _dc(directory, host, password, allow_plain_ldap)
    with _locked(dc.directory):
        ensure_packages()
        if not dc.directory.exists():
            dc.directory.mkdir(parents=True)
            (dc.directory / _MARKER).touch()
        elif not (dc.directory / _MARKER).exists():
            raise SambaUnavailable(f"{dc.directory} exists and was not created by this harness")
        return dc.start(timeout)


def stop_samba(directory: Path | None = None, *, host: str | None = None, purge: bool = False) -> bool:
    """Stop the DC started from ``directory`` (only that process); ``purge`` also deletes it."""
    dc = _dc(directory, host, None, False)
    with _locked(dc.directory):
        stopped = dc.stop()
        if purge and (dc.directory / _MARKER).exists():
            shutil.rmtree(dc.directory)
    return stopped


@contextlib.contextmanager
def samba_lease(
    directory: Path | None = None,
    *,
    host: str | None = None,
    keep: bool = False,
    exclusive: bool = False,
    **options: Any,
) -> Iterator[ADSettings]:
    """A DC for the duration of a block; stopped afterwards if this block started it, or by the last
    block using it when the one that started it ended first.

    Several processes (parallel test sessions, a benchmark) may share one DC: each holds a shared
    lock on ``DIR.users`` while using it, and a block stops the DC only when it can take that lock
    exclusively, i.e. nobody else is using the server any more. The block that started it and found
    it still in use leaves ``DIR.stop-when-idle`` behind, so the last user stops it (before, nobody
    did: a DC started by one session and outlived by another ran on after both). The mark is left
    when the DC starts, not when its starter ends: a starter killed before its end (``kill -9``, a
    ``timeout``, a helper session cut off) left none, and its DC ran on after every later user. A DC
    started with ``keep`` has no such mark and runs on. ``exclusive`` holds the lock exclusively for the whole
    block (waiting for the others): for a caller that stops and restarts the DC, which would pull it
    from under another session's test.
    """
    try:
        external = settings_from_env() if options.get("use_env", True) else None
    except ConfigError as exc:
        raise SambaUnavailable(str(exc)) from None
    if external is not None:
        yield external
        return
    dc = _dc(directory, host, None, False)
    dc.directory.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{dc.directory}.users", "a") as users:
        fcntl.flock(users, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        was_running = dc.recorded_pid() is not None
        settings = ensure_samba(dc.directory, host=dc.host, **options)
        idle_mark = Path(f"{dc.directory}.stop-when-idle")
        if not was_running:
            idle_mark.unlink(missing_ok=True)  # a mark for a DC that is gone is not this one's
            if not keep:
                idle_mark.touch()  # now: whoever uses it last stops it, even if this block never ends
        try:
            yield settings
        finally:
            if not keep and idle_mark.exists():
                try:
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass  # someone else still uses it: the last of them stops it
                else:
                    idle_mark.unlink(missing_ok=True)
                    stop_samba(dc.directory, host=dc.host)
