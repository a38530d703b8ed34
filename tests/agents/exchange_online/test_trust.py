"""Which CAs the HTTPS clients trust: the operating system's trust store by default, ``ca_bundle``
alone when it is set, and the same through a proxy.

Real TLS throughout: the emulator's certificate comes from a CA of its own (trustme), which no
public bundle (certifi) holds. "The operating system's trust store" is OpenSSL's on Linux, which
honours SSL_CERT_FILE and SSL_CERT_DIR: every test sets both, so none depends on this machine's CAs
(tests.harness.trust: SSL_CERT_DIR names no folder, so the machine's hashed CA folder stays out).
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from connector.demo import dump_toml, write_secret
from connector.emulator import TEST_HOSTNAME, exo_agent_settings
from connector.net import verifying_session
from connector.sdk import ConfigurationError
from tests.agents.exchange_online.conftest import authority_outage_at_open, imported, make_connector
from tests.cli._configs import invoke
from tests.harness.sockets import connect_proxy
from tests.harness.trust import other_ca, subprocess_env, system_store


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return system_store(tmp_path, monkeypatch)


def _trust_the_emulator(emu: Any, store: Path) -> None:
    """The emulator's CA in the test's system store, as Group Policy deploys a proxy's CA."""
    store.write_bytes(Path(emu.info["ca_cert"]).read_bytes())


def test_without_ca_bundle_the_agent_trusts_the_systems_store(
    make_emulator: Any, tmp_path: Path, cache_key: str, store: Path
) -> None:
    """Sign-in (MSAL) and Graph both verify with the system's store. requests used certifi's bundle
    instead: with the CA only in the system's store (a TLS-inspecting proxy's, deployed by Group
    Policy), every request failed with CERTIFICATE_VERIFY_FAILED unless ca_bundle named a PEM copy."""
    emu = make_emulator(users=12)
    _trust_the_emulator(emu, store)
    entries, watermark = imported(make_connector(emu, tmp_path, ca_bundle=None))
    assert watermark is not None and len(entries) == 12
    assert not [e for e in entries if e.error is not None]


@pytest.mark.usefixtures("netrc_everywhere")
def test_a_netrc_with_a_default_entry_changes_neither_the_sign_in_nor_graphs_requests(
    make_emulator: Any, tmp_path: Path, cache_key: str
) -> None:
    """A sync server's account keeps a netrc for curl or git, with a ``default`` entry. requests put its
    Basic credentials over every request's own: the sign-in stopped as "invalid_client ... Invalid client
    secret" (the authority read the netrc's instead of MSAL's) and sent the netrc password to Microsoft.
    The import now signs in and reads every user (tests/net/test_netrc.py checks the headers sent)."""
    emu = make_emulator(users=12)
    entries, watermark = imported(make_connector(emu, tmp_path))
    assert watermark is not None and len(entries) == 12
    assert not [e for e in entries if e.error is not None]


def test_ca_bundle_pins_verification_to_its_file_alone(
    make_emulator: Any, tmp_path: Path, cache_key: str, store: Path
) -> None:
    """The system's store trusts the emulator, but ca_bundle names another CA: ca_bundle wins, and
    the stop says to fix ca_bundle (not the system's store)."""
    emu = make_emulator(users=1)
    _trust_the_emulator(emu, store)
    other = other_ca(tmp_path)
    assert authority_outage_at_open(make_connector(emu, tmp_path, ca_bundle=other)) == (
        f"cannot reach the authority {emu.info['authority']}: TLS certificate not trusted ({other}, which "
        "agents.exo.settings.ca_bundle names, does not hold the CA that issued it: add that CA to the file, or set "
        "agents.exo.settings.ca_bundle to a PEM file that holds it)"
    )


def test_requests_ca_bundle_pins_like_ca_bundle_and_a_missing_one_is_named(
    make_emulator: Any, tmp_path: Path, cache_key: str, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REQUESTS_CA_BUNDLE keeps the meaning requests gives it (an installation that set it keeps
    working): the process's CA file, for agents without a ca_bundle of their own."""
    emu = make_emulator(users=1)
    _trust_the_emulator(emu, store)
    other = other_ca(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other))
    assert f"TLS certificate not trusted ({other}, which REQUESTS_CA_BUNDLE names " in authority_outage_at_open(
        make_connector(emu, tmp_path, ca_bundle=None)
    )
    missing = tmp_path / "gone.pem"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(missing))
    with pytest.raises(ConfigurationError) as refused:
        verifying_session(None)
    assert str(refused.value) == (
        f"REQUESTS_CA_BUNDLE: {missing} does not exist: give the PEM file of the CA that issued the server's "
        "certificate; or unset REQUESTS_CA_BUNDLE to verify with this machine's trust store"
    )


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_a_certificate_the_variables_ca_file_does_not_trust_is_named_with_the_file_and_the_fixes(
    make_emulator: Any, tmp_path: Path, cache_key: str, store: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """Found by QA: with REQUESTS_CA_BUNDLE set (a service account's profile, set for another tool), an
    untrusted certificate said "the CA file in REQUESTS_CA_BUNDLE does not hold the CA that issued it":
    neither the file, nor the agent's ca_bundle (which wins over the variable), nor unsetting it. The
    stop and ``mvsync doctor`` now name the file, the variable, the agent's setting and each fix."""
    emu = make_emulator(users=1)
    _trust_the_emulator(emu, store)  # this machine's store trusts it: the variable's file alone refuses it
    other = other_ca(tmp_path)
    monkeypatch.setenv(variable, str(other))
    untrusted = (
        f"cannot reach the authority {emu.info['authority']}: TLS certificate not trusted ({other}, which {variable} "
        "names in mvsync's environment and which verifies every HTTPS agent without a ca_bundle, does not hold the "
        f"CA that issued it: set agents.exo.settings.ca_bundle to the PEM file of that CA, add the CA to {other}, "
        f"or unset {variable} to verify with this machine's trust store)"
    )
    assert authority_outage_at_open(make_connector(emu, tmp_path, ca_bundle=None)) == untrusted
    settings = exo_agent_settings(emu.info, refresh_token={"file": str(write_secret(tmp_path / "rt", "seed"))})
    del settings["ca_bundle"]
    config = tmp_path / "mvsync.toml"
    config.write_text(
        dump_toml({"data_dir": "data", "agents": {"exo": {"type": "exchange-online-photos", "settings": settings}}}),
        encoding="utf-8",
    )
    code, out, err = invoke("doctor", "-c", str(config), "--no-store", "--json")
    findings = {f["check"]: f for f in json.loads(out)["findings"]}
    assert (code, findings["agents.exo.reachable"]["message"]) == (6, untrusted), out + err


def test_through_a_connect_proxy_the_system_store_verifies_the_server(
    make_emulator: Any, tmp_path: Path, cache_key: str, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY set, no ca_bundle: Graph's requests go through the proxy's tunnel, and the
    server's certificate is verified with the system's store on the far side of it."""
    emu = make_emulator(users=12)
    _trust_the_emulator(emu, store)
    port = urlsplit(emu.info["graph_url"]).port
    with connect_proxy(hosts={TEST_HOSTNAME: "127.0.0.1"}) as (proxy_port, targets):
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy_port}")
        graph_url = f"https://{TEST_HOSTNAME}:{port}/v1.0"
        entries, watermark = imported(make_connector(emu, tmp_path, ca_bundle=None, graph_url=graph_url))
    assert watermark is not None and len(entries) == 12
    assert not [e for e in entries if e.error is not None]
    assert set(targets) == {f"{TEST_HOSTNAME}:{port}"}, targets


def test_the_proxys_tunnels_verify_with_the_sessions_own_context(
    make_emulator: Any, tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests hands a proxy manager no TLS context of its own: without the session's truststore
    context, a tunnelled request would verify with OpenSSL's defaults (empty on Windows). The context
    is the session's one, made once, not one per request."""
    emu = make_emulator(users=1)
    _trust_the_emulator(emu, store)
    url = f"https://{TEST_HOSTNAME}:{urlsplit(emu.info['graph_url']).port}/v1.0/users"
    with connect_proxy(hosts={TEST_HOSTNAME: "127.0.0.1"}) as (proxy_port, targets):
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy_port}")
        with verifying_session(None, timeout_s=30) as session:
            answers = [session.get(url).status_code for _ in range(2)]  # no token: 401, once TLS worked
            adapter = session.get_adapter(url)
            managers = list(adapter.proxy_manager.values())
    assert answers == [401, 401] and targets, (answers, targets)
    context = adapter.context  # type: ignore[attr-defined]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert managers and all(m.connection_pool_kw["ssl_context"] is context for m in managers)


@pytest.mark.parametrize("trust", ["system store", "ca_bundle", "REQUESTS_CA_BUNDLE"])
def test_new_connections_share_one_context_whose_cas_were_loaded_once(
    make_emulator: Any, tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch, trust: str
) -> None:
    """Every new connection of a session, direct or through a proxy's tunnel, is made with the
    session's one context, and no CA file is loaded again for it. truststore on Linux loaded OpenSSL's
    default paths (SSL_CERT_FILE) into its context before every handshake, and urllib3, given a CA
    file's path (ca_bundle, REQUESTS_CA_BUNDLE), made a context and parsed the file for each new
    connection: 55-90 ms each with a distribution's bundle. Counted by wrapping ssl.SSLContext's
    loading methods, not timed."""
    emu = make_emulator(users=1)
    _trust_the_emulator(emu, store)
    loads: list[str] = []
    wrapped: list[ssl.SSLContext] = []
    for method in ("set_default_verify_paths", "load_verify_locations", "load_default_certs"):
        original = getattr(ssl.SSLContext, method)

        def counting(
            self: ssl.SSLContext, *args: Any, _original: Any = original, _name: str = method, **kw: Any
        ) -> Any:
            loads.append(_name)
            return _original(self, *args, **kw)

        monkeypatch.setattr(ssl.SSLContext, method, counting)
    wrap_socket = ssl.SSLContext.wrap_socket

    def wrapping(self: ssl.SSLContext, *args: Any, **kw: Any) -> Any:
        wrapped.append(self)
        return wrap_socket(self, *args, **kw)

    monkeypatch.setattr(ssl.SSLContext, "wrap_socket", wrapping)
    port = urlsplit(emu.info["graph_url"]).port
    direct = f"https://127.0.0.1:{port}/v1.0/users"
    tunnelled = f"https://{TEST_HOSTNAME}:{port}/v1.0/users"
    if trust == "REQUESTS_CA_BUNDLE":
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(store))
    with verifying_session(store if trust == "ca_bundle" else None, timeout_s=30) as session:
        built = len(loads)
        adapter = session.get_adapter(direct)
        context = adapter.context  # type: ignore[attr-defined]
        inner = getattr(context, "_ctx", context)  # (truststore's context wraps an ssl.SSLContext)
        settings = (inner.verify_mode, inner.check_hostname, inner.cert_store_stats())
        answers = []
        for _ in range(4):
            answers.append(session.get(direct).status_code)  # no token: 401, once TLS worked
            adapter.poolmanager.clear()  # the next request makes a new connection
        with connect_proxy(hosts={TEST_HOSTNAME: "127.0.0.1"}) as (proxy_port, targets):
            monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy_port}")
            for _ in range(2):
                answers.append(session.get(tunnelled).status_code)
                for manager in adapter.proxy_manager.values():
                    manager.clear()
    assert answers == [401] * 6 and len(targets) == 2, (answers, targets)
    # when the session is made, the CA file is checked (readable_ca_file) and loaded into its context
    # (the system store's: OpenSSL's, on Linux; nothing on Windows and macOS); never again after that
    assert built <= 2 and loads[built:] == [], loads
    assert len(wrapped) == 6 and all(c is inner for c in wrapped), wrapped  # 6 connections, one context
    assert (inner.verify_mode, inner.check_hostname, inner.cert_store_stats()) == settings  # as it was made
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def _cli_config(emu: Any, tmp_path: Path) -> Path:
    """An exo agent on the emulator with no ca_bundle."""
    info = emu.info
    config = tmp_path / "mvsync.toml"
    config.write_text(
        f'data_dir = "{(tmp_path / "data").as_posix()}"\n[agents.exo]\ntype = "exchange-online-photos"\n'
        f'[agents.exo.settings]\ntenant_id = "{info["tenant_id"]}"\nclient_id = "{info["client_id"]}"\n'
        f'authority = "{info["authority"]}"\ngraph_url = "{info["graph_url"]}"\ninstance_discovery = false\n'
        f'token_cache_key_file = "{(tmp_path / "cache.key").as_posix()}"\n',
        encoding="utf-8",
    )
    (tmp_path / "rt.txt").write_text(info["refresh_token"], encoding="utf-8")
    return config


def _sign_in(config: Path, trusted: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``mvsync auth login`` in a subprocess whose system store is ``trusted`` alone."""
    env = {**subprocess_env(trusted, tmp_path), "COLUMNS": "250"}
    args = ["auth", "login", "exo", "-c", str(config), "--refresh-token-file", str(tmp_path / "rt.txt")]
    cli = [sys.executable, "-c", "from connector.cli import main; main()", *args]
    return subprocess.run(cli, capture_output=True, text=True, timeout=120, env=env, check=False)


def test_mvsync_signs_in_with_the_ca_in_the_system_store_only(make_emulator: Any, tmp_path: Path, store: Path) -> None:
    emu = make_emulator(users=1)
    _trust_the_emulator(emu, store)
    done = _sign_in(_cli_config(emu, tmp_path), store, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mvsync_names_the_host_and_the_fix_for_a_certificate_the_system_does_not_trust(
    make_emulator: Any, tmp_path: Path, store: Path
) -> None:
    """No traceback and no bare "SSLError": the authority's host, that its certificate is not
    trusted by this machine, and both fixes (the trust store, or the agent's ca_bundle), with exit
    code 4 (a step stopped: the server cannot be used)."""
    emu = make_emulator(users=1)
    done = _sign_in(_cli_config(emu, tmp_path), other_ca(tmp_path), tmp_path)
    said = done.stdout + done.stderr
    assert done.returncode == 4, said
    assert "Traceback" not in said
    authority = emu.info["authority"]
    assert f"cannot reach the authority {authority}: TLS certificate not trusted by this machine's trust store" in (
        " ".join(said.split())
    ), said
    assert "Trusted Root Certification Authorities" in said and "agents.exo" in said, said


def _mvsync(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, with ``env``."""
    cli = [sys.executable, "-c", "from connector.cli import main; main()", *args]
    return subprocess.run(cli, capture_output=True, text=True, timeout=120, env={**env, "COLUMNS": "250"}, check=False)


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"])
def test_a_ca_variable_naming_a_missing_file_is_a_configuration_error_for_every_https_command(
    make_emulator: Any, tmp_path: Path, store: Path, variable: str
) -> None:
    """A CA file the environment names and that is not there is the operator's setting to fix, not
    the server's outage: ``auth login``, ``auth status``, ``run`` and ``doctor`` name the variable
    and the file and say what to do, before anything is sent; exit 2 (doctor: its finding, exit 6).
    Before, ``auth login`` said it and exited 4 (a step stopped); SSL_CERT_FILE naming no file was
    ignored (truststore falls back to the distribution's CA bundle), so the machine's CAs were
    trusted instead of the file the operator named."""
    emu = make_emulator(users=1)
    _trust_the_emulator(emu, store)
    config = _cli_config(emu, tmp_path)
    with config.open("a", encoding="utf-8") as toml:
        toml.write('[run_profiles.full]\nsteps = [{ type = "full-import", agent = "exo" }]\n')
    missing = tmp_path / "gone" / "ca.pem"
    env = {**subprocess_env(store, tmp_path), variable: str(missing)}
    refresh = ["--refresh-token-file", str(tmp_path / "rt.txt")]
    said_for = {}
    for args, code in (
        (["auth", "login", "exo", "-c", str(config), *refresh], 2),
        (["auth", "status", "exo", "-c", str(config)], 2),
        (["run", "full", "-c", str(config)], 2),
        (["doctor", "-c", str(config), "--no-store", "--json"], 6),
    ):
        done = _mvsync(args, env)
        said = done.stdout + done.stderr
        assert (done.returncode, "Traceback" in said) == (code, False), (args, said)
        said_for[args[0] + args[1]] = " ".join(said.split())
    wanted = f"{variable}: {missing} does not exist: give the PEM file of the CA that issued the server's certificate; "
    wanted += f"or unset {variable} to verify with this machine's trust store"
    assert all(wanted in said for said in said_for.values()), said_for
    findings = json.loads(said_for["doctor-c"].split("\n")[0])["findings"]
    assert [f["message"] for f in findings if f["check"] == "agents.exo.trust"] == [wanted], findings
    assert emu.stats.snapshot()["requests"] == 0  # nothing was sent: neither the sign-in nor Graph


def test_a_ca_bundle_setting_naming_a_missing_file_stops_auth_login_as_a_configuration_error(
    make_emulator: Any, tmp_path: Path, store: Path
) -> None:
    """The agent's own ca_bundle, missing: ``auth login`` names the key and the file and exits 2, as
    a run does before its first step. Before, it said ``ca_bundle: ...`` (no agent) and exited 4."""
    emu = make_emulator(users=1)
    _trust_the_emulator(emu, store)
    config = _cli_config(emu, tmp_path)
    missing = tmp_path / "gone" / "ca.pem"
    with config.open("a", encoding="utf-8") as toml:
        toml.write(f'ca_bundle = "{missing.as_posix()}"\n')
    done = _mvsync(
        ["auth", "login", "exo", "-c", str(config), "--refresh-token-file", str(tmp_path / "rt.txt")],
        subprocess_env(store, tmp_path),
    )
    said = " ".join((done.stdout + done.stderr).split())
    assert (done.returncode, "Traceback" in said) == (2, False), said
    assert f"agents.exo.settings.ca_bundle: cannot read {missing}" in said, said
    assert emu.stats.snapshot()["requests"] == 0


def test_a_proxy_wanting_credentials_is_named_by_its_host_and_never_by_its_password(
    make_emulator: Any, tmp_path: Path, store: Path
) -> None:
    """HTTPS_PROXY with ``user:password@`` whose proxy answers CONNECT with 407: ``auth login`` stops
    (exit 4) saying the proxy at its host and port refused the tunnel and wants credentials; the
    password is in no output, and no traceback."""
    emu = make_emulator(users=1)
    _trust_the_emulator(emu, store)
    port = urlsplit(emu.info["graph_url"]).port
    config = _cli_config(emu, tmp_path)
    text = config.read_text(encoding="utf-8").replace("127.0.0.1", TEST_HOSTNAME)  # (not loopback: proxied)
    config.write_text(text, encoding="utf-8")
    password = "S3cret-Pr0xy-pw"
    with connect_proxy(refuse="407 Proxy Authentication Required") as (proxy_port, targets):
        env = {**subprocess_env(store, tmp_path), "HTTPS_PROXY": f"http://svc-mvsync:{password}@127.0.0.1:{proxy_port}"}
        done = _mvsync(
            ["auth", "login", "exo", "-c", str(config), "--refresh-token-file", str(tmp_path / "rt.txt")], env
        )
    said = done.stdout + done.stderr
    assert (done.returncode, "Traceback" in said, password in said) == (4, False, False), said
    assert targets and set(targets) == {f"{TEST_HOSTNAME}:{port}"}, targets
    assert (
        f"the proxy at 127.0.0.1:{proxy_port} refused the tunnel (407 Proxy Authentication Required): it did not "
        "accept the user name and password of its URL in HTTPS_PROXY"
    ) in " ".join(said.split()), said
