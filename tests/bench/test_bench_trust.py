"""The benchmarks' own HTTPS clients verify TLS as the agents do (``connector.net.verifying_session``).

The plain clients of ``mvsync bench import`` (the classic MA's sequential client, and the batched
bound) are the figures the agent is read against: they must pay for the same verification, and,
like the agent, refuse a certificate that the CA they were given did not issue.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from connector.bench import import_
from connector.emulator import EmulatorConfig, GraphEmulator
from connector.net import failure_kind, verifying_session
from tests.harness.trust import other_ca, system_store


@pytest.fixture
def emulator() -> Iterator[Any]:
    emu = GraphEmulator(EmulatorConfig(users=6, seed=7))
    emu.start()
    yield emu
    emu.stop()


def test_the_classic_client_refuses_a_certificate_its_ca_did_not_issue(
    emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given another CA than the emulator's, the sequential "classic PSMA" client stops at the TLS
    handshake, in the agent's words; given the emulator's CA, it lists the users and GETs photos."""
    other = other_ca(tmp_path)
    system_store(tmp_path, monkeypatch).write_bytes(other.read_bytes())  # (no CA of this machine's, nor variable)
    untrusted = {**emulator.info, "ca_cert": str(other)}
    with pytest.raises(requests.exceptions.SSLError) as refused:
        import_._naive(untrusted, seconds=1)
    assert failure_kind(refused.value) == (
        f"TLS certificate not trusted ({other}, which ca_bundle names, does not hold the CA that issued it: add "
        "that CA to the file, or set ca_bundle to a PEM file that holds it)"
    )
    trusted = import_._naive(emulator.info, seconds=1)
    assert trusted["naive_users_looked_up"] > 0, trusted


def test_the_bench_clients_session_is_the_agents(emulator: Any) -> None:
    """The same adapter as the agent's session (its one TLS context, its timeout), not a plain one."""
    ca = emulator.info["ca_cert"]
    url = emulator.info["graph_url"]
    with import_._session(ca) as bench, verifying_session(Path(ca), timeout_s=60) as agent:
        ours, theirs = bench.get_adapter(url), agent.get_adapter(url)
        assert type(ours) is type(theirs)
        assert ours.timeout_s == import_.ExchangeOnlineSettings.model_fields["timeout_s"].default  # type: ignore[attr-defined]
        assert bench.get(f"{emulator.info['admin_url']}/stats").status_code == 200
