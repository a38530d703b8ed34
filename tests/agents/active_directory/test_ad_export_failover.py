"""A domain controller lost between an export's writes while another DC of the list answers: the export goes
on against the next DC, through the engine, against the real (Samba) DC.

The two DCs: ``host = "localhost"`` is a relay (``FaultyProxy``) in front of the session's Samba DC, on
127.0.0.1 and the DC's own LDAPS port (a list of DCs shares one port); ``fallback_hosts`` is the Samba DC
itself by its loopback address. The DC's certificate names both. The relay is cut (hung or resetting)
right after the 4th write was answered.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pytest

from connector.config import config_from_dict
from connector.engine import Engine
from connector.store import RunHistory
from tests.agents.active_directory.conftest import ADTestEnv, jpeg, photo_sync_config
from tests.agents.active_directory.test_ad_export_outage import _outage_after_writes, _pending, _usn
from tests.harness.sockets import FaultyProxy, faulty_proxy

pytestmark = pytest.mark.samba

#: Batches of 3 for 7 people: the first DC is lost after the 4th write, in the second batch.
_USERS, _BATCH, _WRITES_BEFORE_OUTAGE = 7, 3, 4
#: What a hung DC costs (a write's answer, then a handshake), and what the real DC may take on a busy host.
_TIMEOUT_S = 5


@contextlib.contextmanager
def _two_dcs(ad_env: ADTestEnv, seed: int, connections: int) -> Iterator[tuple[Engine, FaultyProxy, str, list[str]]]:
    if ad_env.ad.external or ad_env.ad.ca_cert is None or ad_env.ad.host == "127.0.0.1":
        pytest.skip("needs the harness's own DC on a loopback address of its own, its certificate naming localhost")
    people, names, photos = ad_env.people_with_photos(_USERS, seed=seed)
    port = ad_env.ad.ldaps_port
    with faulty_proxy((ad_env.ad.host, port), listen=("127.0.0.1", port)) as first:
        settings = {
            "host": "localhost",
            "fallback_hosts": [ad_env.ad.host],
            "export_connections": connections,
            "connect_timeout": _TIMEOUT_S,
            "receive_timeout": _TIMEOUT_S,
            "reconnect_attempts": 1,
        }
        config = photo_sync_config(ad_env, people, photos, settings, export_step={"batch_size": _BATCH})
        engine = Engine(config_from_dict(config, base_dir=ad_env.tmp_path))
        try:
            assert engine.run_profile("Prepare").status == "success"
            yield engine, first, people, names
        finally:
            engine.close()


@pytest.mark.parametrize(("outage", "connections"), [("hold", 1), ("reset", 1), ("hold", 3)])
def test_an_export_whose_dc_is_lost_between_writes_carries_on_against_the_next_dc(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, outage: str, connections: int
) -> None:
    """Before: the export carried on and wrote everyone once, but the history named the first DC as "passed
    over", as if the 4 writes it had made went elsewhere. Now it says which DC took over from which."""
    caplog.set_level(logging.WARNING)
    with _two_dcs(ad_env, seed=1300, connections=connections) as (engine, first, people, names):
        written = _outage_after_writes(monkeypatch, _WRITES_BEFORE_OUTAGE, getattr(first, outage))
        run = engine.run_profile("Export")
        pending = _pending(engine)
        monkeypatch.undo()
        assert run.run_id is not None
        with engine.store.read() as conn:
            (recorded,) = RunHistory(conn).steps(run.run_id)
        usn_after = {dn: _usn(ad_env, dn) for dn in written}
        again = engine.run_profile("Export")
    step = run.steps[0]
    assert run.status == "success", [s.as_dict() for s in run.steps]
    assert step.counters.get("export_updates") == _USERS, step.counters  # none lost
    assert not step.errors, [e.as_dict() for e in step.errors]
    assert pending == 0
    for i, name in enumerate(names):
        assert ad_env.read(name, "thumbnailPhoto", people) == [jpeg(1300 + i)], name
    # history says which DCs served: the first, then the one the export carried on against
    port = ad_env.ad.ldaps_port
    reason = "timeout during the TLS handshake with" if outage == "hold" else "reset during the TLS handshake"
    took_over = f"domain controller {ad_env.ad.host}:{port} (ldaps), which took over from localhost:{port} (ldaps) "
    assert reason in step.message, step.message
    if connections == 1:
        assert step.message.startswith(f"served by {took_over}(lost during the step: "), step.message
        assert "passing over" not in step.message, step.message
    else:  # each connection fails over on its own; at least one was writing when the first DC was lost
        assert step.message.startswith("served by domain controller "), step.message
        assert took_over in step.message, step.message
    assert recorded.message == step.message
    # and the log says when it happened
    assert f"domain controller {ad_env.ad.host}:{port} (ldaps) answers in place of localhost:{port}" in caplog.text
    # nothing is written twice by a later export: the one after finds nothing to do
    assert again.status == "success" and not again.steps[0].counters.get("export_updates"), again.steps[0].counters
    assert {dn: _usn(ad_env, dn) for dn in written} == usn_after
