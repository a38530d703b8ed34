"""A domain controller lost in the middle of an export step, through the engine, against the real (Samba)
DC behind a loopback relay that the test turns into a hung or a resetting server.

Found in a bad-day pass over the export: a DC that hung mid-export cost every later batch of the step
its own connect and handshake timeouts (the step ran on for minutes, then ended
``completed-export-errors`` with one ``cd-server-down`` error per pending person), and a DC that reset
connections stopped the step on the first reset ("does the port speak ldaps?") without recording the
writes its batch had already made, so the next export wrote them again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connector.agents.active_directory import _export
from connector.config import config_from_dict
from connector.engine import Engine, RunResult
from connector.sdk import ConfigurationError
from connector.store import ConnectorSpace
from tests.agents.active_directory.conftest import ADTestEnv, jpeg, photo_sync_config
from tests.harness.sockets import FaultyProxy, faulty_proxy

pytestmark = pytest.mark.samba

#: Batches of 3 for 7 people: the DC goes away after the 4th write, the first of the second batch.
_USERS, _BATCH, _WRITES_BEFORE_OUTAGE = 7, 3, 4


def _config(ad_env: ADTestEnv, people: str, photos: Path, port: int, **overrides: Any) -> dict[str, Any]:
    relayed = {
        "host": "localhost",  # a name the DC's certificate holds; the relay listens there
        "port": port,
        "export_connections": 1,
        "connect_timeout": 1,
        "receive_timeout": 2,
        "reconnect_attempts": 1,
        **overrides,
    }
    return photo_sync_config(ad_env, people, photos, relayed, export_step={"batch_size": _BATCH})


def _outage_after_writes(monkeypatch: pytest.MonkeyPatch, count: int, outage: Callable[[], None]) -> list[str]:
    """Start the outage right after the ``count``-th LDAP modify has been answered (the DNs written)."""
    original = _export._modify
    written: list[str] = []

    def modify_then_outage(conn: Any, dn: str, changes: Any) -> dict[str, Any]:
        result = original(conn, dn, changes)
        written.append(dn)
        if len(written) == count:
            outage()
        return result

    monkeypatch.setattr(_export, "_modify", modify_then_outage)
    return written


@contextlib.contextmanager
def _prepared_behind_relay(
    ad_env: ADTestEnv, seed: int, **overrides: Any
) -> Iterator[tuple[Engine, FaultyProxy, str, list[str]]]:
    """An engine whose AD agent reaches the real DC through a ``FaultyProxy``, with ``_USERS`` people (OU
    "people", names in order) whose photos (``jpeg(seed + i)``) are staged for export ("Prepare" run);
    ``overrides`` replace settings of ``_config``."""
    if ad_env.ad.external or ad_env.ad.ca_cert is None:
        pytest.skip("the relay needs the harness's own DC, whose certificate names localhost")
    people, names, photos = ad_env.people_with_photos(_USERS, seed=seed)
    with faulty_proxy((ad_env.ad.host, ad_env.ad.ldaps_port)) as dc:
        config = _config(ad_env, people, photos, dc.port, **overrides)
        engine = Engine(config_from_dict(config, base_dir=ad_env.tmp_path))
        try:
            assert engine.run_profile("Prepare").status == "success"
            yield engine, dc, people, names
        finally:
            engine.close()


def _pending(engine: Engine) -> int:
    with engine.store.read() as conn:
        return ConnectorSpace(conn).count("ad", pending_export=True)


@dataclass
class ExportAgain:
    """An export the DC's bad answer stopped, and the export after it once the answer is gone, with the
    exports still pending after each."""

    stopped: RunResult
    pending_after: int
    resumed: RunResult
    pending_final: int


def export_then_again(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> ExportAgain:
    """``Export`` with what ``monkeypatch`` set up (the DC's bad answer), then ``Export`` again without it."""
    stopped = engine.run_profile("Export")
    pending_after = _pending(engine)
    monkeypatch.undo()
    resumed = engine.run_profile("Export")
    return ExportAgain(stopped, pending_after, resumed, _pending(engine))


@pytest.mark.parametrize("outage", ["hold", "reset"])
def test_a_dc_lost_mid_export_stops_the_step_and_the_next_export_writes_only_the_rest(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch, outage: str
) -> None:
    with _prepared_behind_relay(ad_env, seed=700) as (engine, dc, people, names):
        written = _outage_after_writes(monkeypatch, _WRITES_BEFORE_OUTAGE, getattr(dc, outage))
        stopped = engine.run_profile("Export")
        pending_after_outage = _pending(engine)
        monkeypatch.undo()
        dc.relay()
        usn_between = {dn: _usn(ad_env, dn) for dn in written}
        resumed = engine.run_profile("Export")
        pending_final = _pending(engine)
    _assert_stopped_naming_the_dc(stopped, dc)
    step = stopped.steps[0]
    assert step.counters.get("export_updates") == _WRITES_BEFORE_OUTAGE, step.counters  # writes made are recorded
    # only the batch that met the outage has per-object verdicts; the last batch was not tried (no timeouts)
    assert [e.error_name for e in step.errors] == ["cd-server-down"] * (2 * _BATCH - _WRITES_BEFORE_OUTAGE)
    # the write under way when the DC was lost is unknown (sent, no answer), the batch's next one not sent
    in_flight, not_sent = (e.detail for e in step.errors)
    assert "sent, and its answer never came" in in_flight, in_flight
    assert "whether the DC applied it is unknown" in in_flight, in_flight
    assert "not sent: " in not_sent, not_sent
    assert pending_after_outage == _USERS - _WRITES_BEFORE_OUTAGE
    # the next export writes exactly the rest, nothing twice
    assert resumed.status == "success", [s.as_dict() for s in resumed.steps]
    assert resumed.steps[0].counters.get("export_updates") == _USERS - _WRITES_BEFORE_OUTAGE
    assert pending_final == 0
    assert {dn: _usn(ad_env, dn) for dn in written} == usn_between
    for i, name in enumerate(names):
        assert ad_env.read(name, "thumbnailPhoto", people) == [jpeg(700 + i)], name


def _assert_stopped_naming_the_dc(stopped: Any, dc: FaultyProxy) -> None:
    assert stopped.status == "stopped-server-down", [s.as_dict() for s in stopped.steps]
    message = stopped.steps[0].message
    assert f"localhost:{dc.port} (ldaps)" in message, message
    assert "the rest stay pending for the next export" in message, message


def _usn(ad_env: ADTestEnv, dn: str) -> int:
    name, ou = dn.split(",", 1)
    return ad_env.usn(name.split("=", 1)[1], ou)


def test_a_connection_reset_once_mid_export_is_made_again_and_the_export_goes_on(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DC (or a firewall) that resets the connection once, then answers again: the agent reconnects to it,
    sends the next write again, and the step succeeds with nobody left pending or written twice."""
    with _prepared_behind_relay(ad_env, seed=800) as (engine, dc, people, names):
        accepted_before = dc.accepted
        _outage_after_writes(monkeypatch, _WRITES_BEFORE_OUTAGE, dc.relay)  # resets, then relays again
        run = engine.run_profile("Export")
        pending = _pending(engine)
    assert run.status == "success", [s.as_dict() for s in run.steps]
    assert run.steps[0].counters.get("export_updates") == _USERS, run.steps[0].counters
    assert not run.steps[0].errors
    assert pending == 0
    assert dc.accepted > accepted_before + 1  # the export's connection, and the one made again after the reset
    for i, name in enumerate(names):
        assert ad_env.read(name, "thumbnailPhoto", people) == [jpeg(800 + i)], name


def test_a_write_the_dc_takes_and_never_answers_ends_within_its_bound_outcome_unknown(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DC that accepts connections, binds, takes a write and never answers it (the relay drops the write's
    bytes, ``hang_open``; connections made after relay as before, so every reconnect binds and the write is
    sent again, to hang again). The bound is ``receive_timeout`` per sending, ``reconnect_attempts`` + 1
    sendings: the step stops after them with the write "sent, and its answer never came" (outcome unknown),
    the photo not in the directory and still pending, and the next export writes it."""
    # every reconnect must reach the DC and bind (through the relay) within these, however busy the machine
    timeouts = {"connect_timeout": 5, "receive_timeout": 4}
    settings = _config(ad_env, "", Path(), 0, **timeouts)["agents"]["ad"]["settings"]
    receive_s, sendings = settings["receive_timeout"], settings["reconnect_attempts"] + 1
    with _prepared_behind_relay(ad_env, seed=1400, **timeouts) as (engine, dc, people, names):
        original = _export._modify
        written: list[str] = []
        hung: list[str] = []

        def modify_or_hang(conn: Any, dn: str, changes: Any) -> dict[str, Any]:
            if len(written) >= _WRITES_BEFORE_OUTAGE:
                hung.append(dn)
                dc.hang_open()  # this connection, bound and answering so far, drops what is sent now
            result = original(conn, dn, changes)
            written.append(dn)
            return result

        monkeypatch.setattr(_export, "_modify", modify_or_hang)
        started = time.monotonic()
        stopped = engine.run_profile("Export")
        elapsed = time.monotonic() - started
        pending_after = _pending(engine)
        monkeypatch.undo()
        unwritten = ad_env.read(hung[0].split(",", 1)[0].split("=", 1)[1], "thumbnailPhoto", people)
        resumed = engine.run_profile("Export")
        pending_final = _pending(engine)
    _assert_stopped_naming_the_dc(stopped, dc)
    step = stopped.steps[0]
    assert f"no answer within receive_timeout ({receive_s} s)" in step.message, step.message
    # bounded: the hung write was sent reconnect_attempts + 1 times, each waited receive_timeout, then no more
    assert len(set(hung)) == 1 and len(hung) == sendings, hung
    assert elapsed >= sendings * receive_s
    assert elapsed < sendings * receive_s + 60, elapsed  # generous: a wait with no bound would hit pytest's timeout
    in_flight, not_sent = (e.detail for e in step.errors)
    assert in_flight.startswith(f"modify {hung[0]}: sent, and its answer never came"), in_flight
    assert "whether the DC applied it is unknown" in in_flight, in_flight
    assert "not sent: " in not_sent, not_sent
    assert [e.error_name for e in step.errors] == ["cd-server-down"] * 2
    assert step.counters.get("export_updates") == _WRITES_BEFORE_OUTAGE, step.counters
    assert pending_after == _USERS - _WRITES_BEFORE_OUTAGE
    assert unwritten == []  # the DC never had it: still pending, not lost
    assert resumed.status == "success", [s.as_dict() for s in resumed.steps]
    assert pending_final == 0
    for i, name in enumerate(names):
        assert ad_env.read(name, "thumbnailPhoto", people) == [jpeg(1400 + i)], name


def test_a_ca_file_gone_at_a_reconnect_mid_export_stops_the_step_and_keeps_the_writes_made(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in the QA pass: the CA file removed (a certificate rollout replacing it) and the connection
    reset mid-export: the reconnect's ``ConfigurationError`` (ca_file) left the export without the batch's
    results, so the write the DC had taken in that batch stayed pending, unrecorded, to be written again.
    Now the step stops ``stopped-configuration`` naming ca_file, with that write recorded."""
    if ad_env.ad.ca_cert is None:
        pytest.skip("the harness's own DC has a CA file to take away")
    ca = ad_env.tmp_path / "ca.pem"
    ca.write_bytes(ad_env.ad.ca_cert.read_bytes())

    def ca_gone_and_reset(dc: FaultyProxy) -> Callable[[], None]:
        def outage() -> None:
            ca.rename(ca.with_suffix(".gone"))
            dc.relay()  # resets the open connection: the next write reconnects

        return outage

    with _prepared_behind_relay(ad_env, seed=1500, ca_file=str(ca)) as (engine, dc, people, names):
        written = _outage_after_writes(monkeypatch, _WRITES_BEFORE_OUTAGE, ca_gone_and_reset(dc))
        with pytest.raises(ConfigurationError) as stopped:  # the run is recorded, the CLI exits 2 with its message
            engine.run_profile("Export")
        pending_after = _pending(engine)
        monkeypatch.undo()
        ca.with_suffix(".gone").rename(ca)
        usn_between = {dn: _usn(ad_env, dn) for dn in written}
        resumed = engine.run_profile("Export")
        pending_final = _pending(engine)
    assert str(stopped.value).startswith(f"agents.ad.settings.ca_file: {ca} does not exist"), str(stopped.value)
    assert pending_after == _USERS - _WRITES_BEFORE_OUTAGE  # the writes made, the batch's last too, are recorded
    assert resumed.status == "success", [s.as_dict() for s in resumed.steps]
    assert resumed.steps[0].counters.get("export_updates") == _USERS - _WRITES_BEFORE_OUTAGE
    assert pending_final == 0
    assert {dn: _usn(ad_env, dn) for dn in written} == usn_between  # nobody written twice
    for i, name in enumerate(names):
        assert ad_env.read(name, "thumbnailPhoto", people) == [jpeg(1500 + i)], name
