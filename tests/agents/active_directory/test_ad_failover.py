"""A list of domain controllers (``host``, then ``fallback_hosts``: MIM's preferred domain controllers) on
a bad day: one DC down (nothing listens: refused), one hung (accepts TCP, never answers), the session's
Samba DC the one that answers.

Why: the agent talked to one DC; when it was down or hung the run stopped although the domain has other
DCs. Now a connect tries the DCs in order, the run history says which one served the step and why the ones
before it were passed over, a step whose DCs are all out of reach names every one, and a delta goes back to
the DC its watermark came from (USNs mean something only there).

The dead and hung DCs are loopback addresses of their own on the Samba DC's LDAPS port (a list of DCs
shares one port setting); the addresses are drawn at random so that sessions running at once do not meet.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ldap3.core.exceptions import LDAPCertificateError
from pydantic import SecretStr

from connector.agents.active_directory import ActiveDirectorySettings
from connector.agents.active_directory._connection import Link, describe_failure
from connector.agents.active_directory._import import DcIdentity, Watermark
from connector.config import config_from_dict
from connector.engine import Engine, RunResult
from connector.sdk import ServerDownError
from connector.store import AgentStateRepository, RunHistory
from tests.agents.active_directory.conftest import ADTestEnv, photo_sync_config
from tests.agents.active_directory.test_ad_network_errors import import_config, run_import_in_child
from tests.harness.sockets import FaultyProxy, faulty_proxy, silent_server

#: connect_timeout: what a hung DC costs (once per test), and what the real DC's handshake may take (a busy host).
_CONNECT_S = 5
#: connect_timeout of the tests without a real DC (a refused or hung DC fails whatever the load).
_NO_DC_S = 1


def _loopback() -> str:
    """A loopback address nothing else uses (127.0.0.0/8 is all loopback on Linux)."""
    rng = random.SystemRandom()
    return f"127.{rng.randint(100, 250)}.{rng.randint(1, 250)}.{rng.randint(2, 250)}"


@pytest.fixture
def dead_and_hung(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, int]]:
    """A dead DC's address, a hung DC's address, and the port both are asked on (the Samba DC's LDAPS
    port for the tests that use it, any free one otherwise)."""
    port = request.getfixturevalue("samba_ad").ldaps_port if "samba_ad" in request.fixturenames else 0
    hung = _loopback()
    with silent_server((hung, port)) as bound:
        yield _loopback(), hung, bound


def _engine(ad_env: ADTestEnv, **settings: Any) -> Engine:
    photos = ad_env.tmp_path / "hr-photos"
    photos.mkdir(exist_ok=True)
    config = photo_sync_config(ad_env, ad_env.ou, photos, {"connect_timeout": _CONNECT_S, **settings})
    config["run_profiles"] = {
        "Full": {"steps": [{"type": "full-import", "agent": "ad"}]},
        "Delta": {"steps": [{"type": "delta-import", "agent": "ad"}]},
    }
    return Engine(config_from_dict(config, base_dir=ad_env.tmp_path))


def full_then_delta(engine: Engine, first: FaultyProxy) -> tuple[RunResult, RunResult]:
    """Profile "Full" while the DC ``first`` resets connections, then "Delta" once it relays again; the
    engine is closed after."""
    try:
        first.reset()
        full = engine.run_profile("Full")
        first.relay()
        return full, engine.run_profile("Delta")
    finally:
        engine.close()


def _history_message(engine: Engine, run_id: int | None) -> str | None:
    """The message the run history recorded for the run's only step."""
    assert run_id is not None
    with engine.store.read() as conn:
        (step,) = RunHistory(conn).steps(run_id)
    return step.message


def _watermark(engine: Engine) -> Watermark:
    with engine.store.read() as conn:
        text = AgentStateRepository("ad").watermark(conn)
    assert text is not None
    return Watermark.loads(text)


@pytest.mark.samba
def test_a_full_import_passes_over_a_dead_and_a_hung_dc_and_history_names_the_dc_that_served_it(
    ad_env: ADTestEnv, dead_and_hung: tuple[str, str, int]
) -> None:
    """Before: ``host`` was the only DC; with it down the step stopped with ``stopped-server-down``."""
    dead, hung, port = dead_and_hung
    samba = ad_env.ad.host
    ad_env.add_users(ad_env.specs(3, photos=False))
    engine = _engine(ad_env, host=dead, fallback_hosts=[hung, samba], reconnect_attempts=0)
    try:
        run = engine.run_profile("Full")
        recorded = _history_message(engine, run.run_id)
        watermark = _watermark(engine)
    finally:
        engine.close()
    step = run.steps[0]
    assert step.status == "success" and step.counters.get("adds") == 3, step.as_dict()
    assert step.message.startswith(
        f"served by domain controller {samba}:{port} (ldaps), after passing over {dead}, {hung} ("
        f"{dead}:{port} (ldaps) refused the connection"
    ), step.message
    assert f"timeout during the TLS handshake with {hung}:{port} (ldaps) after {_CONNECT_S} s" in step.message
    assert recorded == step.message
    assert watermark.host == samba  # the next delta goes there first


def _settings(hosts: list[str], port: int) -> ActiveDirectorySettings:
    """Settings for DCs none of which answers (the bind DN and password never reach a DC)."""
    return ActiveDirectorySettings.model_validate(
        {
            "host": hosts[0],
            "fallback_hosts": hosts[1:],
            "port": port,
            "bind_dn": "CN=svc,DC=example,DC=test",
            "password": SecretStr("not-the-point"),
            "base_dns": ["DC=example,DC=test"],
            "connect_timeout": _NO_DC_S,
            "reconnect_attempts": 0,
        }
    )


def test_when_no_dc_answers_the_error_names_each_one_tried_and_why(dead_and_hung: tuple[str, str, int]) -> None:
    dead, hung, port = dead_and_hung
    with pytest.raises(ServerDownError) as caught:
        Link(_settings([dead, hung], port), logging.getLogger("test")).connect()
    message = str(caught.value)
    assert message.startswith(
        "cannot reach any of the 2 domain controllers (host, then fallback_hosts; 1 attempt(s) each): "
        f"[1] {dead}:{port} (ldaps) refused the connection: nothing listens on port {port} (check host, port). "
        f"[2] timeout during the TLS handshake with {hung}:{port} (ldaps) after {_NO_DC_S} s: "
    ), message
    assert message.endswith(
        "Check that they run and that this host reaches them, or add a DC that does to fallback_hosts"
    )


def test_a_run_whose_dcs_are_all_out_of_reach_exits_4_naming_each(
    dead_and_hung: tuple[str, str, int], tmp_path: Path
) -> None:
    """``mvsync run`` in a child process, as a scheduler starts it: stopped-server-down, exit code 4."""
    dead, hung, port = dead_and_hung
    lines = f'fallback_hosts = ["{hung}"]\nconnect_timeout = {_NO_DC_S}\nreconnect_attempts = 0'
    code, output = run_import_in_child(import_config(port, lines, host=dead), tmp_path)
    assert code == 4, output
    assert "stopped-server-down" in output and "cannot reach any of the 2 domain controllers" in output, output
    assert f"{dead}:{port} (ldaps) refused the connection" in output, output
    assert f"timeout during the TLS handshake with {hung}:{port} (ldaps)" in output, output
    assert "Traceback" not in output


@pytest.fixture
def two_names(ad_env: ADTestEnv) -> Iterator[tuple[FaultyProxy, FaultyProxy]]:
    """Two DCs of a list, each a relay to the Samba DC on a loopback address of its own (one port)."""
    upstream = (ad_env.ad.host, ad_env.ad.ldaps_port)
    with (
        faulty_proxy(upstream, (_loopback(), 0)) as second,
        faulty_proxy(upstream, (_loopback(), second.port)) as first,
    ):
        yield first, second


@pytest.mark.samba
def test_a_delta_goes_back_to_the_dc_its_watermark_came_from(
    ad_env: ADTestEnv, two_names: tuple[FaultyProxy, FaultyProxy]
) -> None:
    """The full import ran on the second DC while the first was down (resetting connections); the first is
    back when the delta runs. Before, the delta went to the first DC of the list, where a uSNChanged
    watermark of the second means nothing (Microsoft: incremental synchronizations on the same DC)."""
    first, second = two_names
    names = {proxy: proxy._server.getsockname()[0] for proxy in two_names}
    ad_env.add_users(ad_env.specs(2, photos=False))
    # the relays' addresses are not in the DC's certificate: validation is the one thing not under test here
    engine = _engine(
        ad_env,
        host=names[first],
        fallback_hosts=[names[second]],
        port=second.port,
        tls_validate=False,
        delta_method="usn",
    )
    full, delta = full_then_delta(engine, first)
    assert full.status == "success", full.steps[0].as_dict()
    assert f"passing over {names[first]}" in full.steps[0].message
    assert delta.status == "success", delta.steps[0].as_dict()
    assert delta.steps[0].message == f"served by domain controller {names[second]}:{second.port} (ldaps)"


_INV_A, _INV_B = "7c0b3a46-0f8d-4f59-9d2e-8d1f6c0a1b01", "7c0b3a46-0f8d-4f59-9d2e-8d1f6c0a1b02"
_DSA_A = "CN=NTDS Settings,CN=DC1,CN=Servers,CN=Default-First-Site-Name,CN=Sites,CN=Configuration,DC=x,DC=test"
_DSA_B = _DSA_A.replace("CN=DC1", "CN=DC2")
_PARTITION = "0d7e2d1c-2b7a-4f0e-a9a1-5f3d8b6e4c21"


@pytest.mark.parametrize(
    ("cookie", "dsa", "partition", "carries"),
    [
        (b"cookie", _DSA_B, _PARTITION, True),  # another DC of the same partition: Microsoft documents it
        (b"cookie", _DSA_A, _PARTITION, False),  # the same DC restored from a backup (new invocationId)
        (b"cookie", _DSA_B, "another-domain", False),  # a DC of another partition (a namesake domain)
        (None, _DSA_B, _PARTITION, False),  # a uSNChanged watermark means something on its own DC only
    ],
)
def test_which_watermark_carries_over_to_another_dc(
    cookie: bytes | None, dsa: str, partition: str, carries: bool
) -> None:
    mark = Watermark(_INV_A, 100, cookie, False, "dc1.x.test", _DSA_A, _PARTITION)
    assert Watermark.loads(mark.dumps()) == mark
    reached = DcIdentity(_INV_B, 5000, dsa, ("DC=x,DC=test",), host_name="dc2.x.test")
    assert mark.carries_over(reached, partition) is carries


def test_a_watermark_written_before_it_named_its_dc_reads_and_never_carries_over() -> None:
    old = json.dumps({"dirsync": "Y29va2ll", "invocation_id": _INV_A, "object_security": False, "usn": 100, "v": 1})
    mark = Watermark.loads(old)
    assert (mark.host, mark.dsa, mark.partition, mark.dirsync) == ("", "", "", b"cookie")
    assert not mark.carries_over(DcIdentity(_INV_B, 5000, _DSA_B, ()), _PARTITION)


def test_a_fallback_dcs_certificate_for_other_names_names_that_dc_and_fallback_hosts() -> None:
    """Pure logic: the text ldap3 raises for a certificate of other names, seen at the second DC of the list.
    Before: "... names dc9.contoso.com, not dc1.contoso.com: set host ...", the first DC, which was not the one."""
    settings = _settings(["dc1.contoso.com", "dc2.contoso.com"], 636)
    error = LDAPCertificateError(
        "certificate {'subjectAltName': (('DNS', 'dc9.contoso.com'),)} doesn't match any name in ['dc2.contoso.com']"
    )
    text = describe_failure(error, "dc2.contoso.com:636 (ldaps)", settings, host="dc2.contoso.com")
    assert text == (
        "certificate: the certificate of dc2.contoso.com:636 (ldaps) names dc9.contoso.com, not dc2.contoso.com: "
        "set fallback_hosts to one of those names, or have the DC's certificate issued for that name too"
    ), text
