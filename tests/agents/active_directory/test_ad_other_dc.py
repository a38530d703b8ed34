"""A reconnect in the middle of an import step that reaches another domain controller (or the same one
restored from a backup).

Why: USNs and DirSync cookies only mean something on the DC that issued them (Microsoft, "Polling for
Changes Using the USNChanged Attribute": keep the DC's name and invocationId; on another DC, a full
sync). The delta import checked the DC once, at its start; a reconnect during the step (a dropped
connection, a Kerberos rebind, a host name that resolves to several DCs, a load balancer) went on with
the first DC's change numbers on the second, and a full import recorded the first DC's position while
reading the second's objects.

What models "another DC" here: the configured host (``localhost``) is a loopback relay that the test
switches from the session's DC to a second Samba DC, provisioned like the first (same domain name,
same DC name, same administrator, a certificate for ``localhost`` from a CA in the agent's ca_file),
but with its own invocationId and USN sequence and its own copy of the test's OU. That is what the agent
sees of a restored DC, or of another DC of the domain behind the same name; it is not a replica (its
objects differ), which only makes a wrong delta easier to see.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ldap3 import BASE, MODIFY_REPLACE

from connector.agents.active_directory import _import
from connector.agents.active_directory._import import Watermark
from connector.config import config_from_dict
from connector.engine import Engine
from connector.store import AgentStateRepository, ConnectorSpace, CsSearch
from tests.agents.active_directory.conftest import ADTestEnv, after_first_page, photo_sync_config
from tests.harness.samba_dc import (
    ADSettings,
    SambaUnavailable,
    connect,
    create_users,
    delete_subtree,
    ensure_ou,
    samba_lease,
)
from tests.harness.sockets import FaultyProxy, faulty_proxy

pytestmark = pytest.mark.samba

#: Six people read in pages of two: the reconnect comes after the first page.
_USERS, _PAGE = 6, 2
#: A loopback address of its own for the second DC (the session's is 127.0.83.1, test_samba_lease's .8, the
#: restart benchmark's .9).
_SECOND_HOST = "127.0.83.5"


@pytest.fixture(scope="module")
def second_dc(samba_ad: ADSettings) -> Iterator[ADSettings]:
    if samba_ad.external or samba_ad.ca_cert is None:
        pytest.skip("a second DC needs the harness's own DC (AD_* describes an external one)")
    try:
        with samba_lease(host=_SECOND_HOST, use_env=False) as settings:
            yield settings
    except SambaUnavailable as exc:
        pytest.skip(f"no second Samba DC: {exc}")


def _invocation_id(admin: Any) -> str:
    """The invocationId of the DC ``admin`` is bound to (its NTDS Settings object, named by the rootDSE)."""
    admin.search("", "(objectClass=*)", BASE, attributes=["dsServiceName"])
    service = admin.response[0]["attributes"]["dsServiceName"]
    admin.search(service, "(objectClass=*)", BASE, attributes=["invocationId"])
    return _import.guid_text(admin.response[0]["raw_attributes"]["invocationId"][0])


class _TwoDcs:
    """The session's DC (A) and the second one (B), the test's OU on both, and the relay in front."""

    def __init__(self, ad_env: ADTestEnv, second: ADSettings, relay: FaultyProxy) -> None:
        self.env, self.second, self.relay = ad_env, second, relay
        self.people = ad_env.sub_ou("people")
        self.guids = ad_env.add_users(ad_env.specs(_USERS, photos=False), ou=self.people)
        self.admin_b = connect(second)
        ensure_ou(self.admin_b, ad_env.ou)
        ensure_ou(self.admin_b, self.people)  # the same base DN exists there, with another person in it
        only_b = create_users(self.admin_b, self.people, ad_env.specs(1, prefix="b", photos=False), second.upn_suffix)
        self.only_on_b = set(only_b.values())
        self.inv_a, self.inv_b = _invocation_id(ad_env.admin), _invocation_id(self.admin_b)
        bundle = ad_env.tmp_path / "both-cas.pem"
        assert ad_env.ad.ca_cert is not None and second.ca_cert is not None
        bundle.write_bytes(Path(ad_env.ad.ca_cert).read_bytes() + Path(second.ca_cert).read_bytes())
        self.ca_bundle = bundle

    def to_b(self) -> None:
        """The connections break; the next one reaches the second DC under the same name."""
        self.relay.upstream = (self.second.host, self.second.ldaps_port)
        self.relay.relay()

    def engine(self, **ad_settings: Any) -> Engine:
        photos = self.env.tmp_path / "hr-photos"
        photos.mkdir(exist_ok=True)
        relayed = {
            "host": "localhost",  # both certificates name localhost; the relay listens there
            "port": self.relay.port,
            "ca_file": str(self.ca_bundle),
            "page_size": _PAGE,
            "reconnect_attempts": 1,
            **ad_settings,
        }
        config = photo_sync_config(self.env, self.people, photos, relayed)
        config["run_profiles"] = {
            "Full": {"steps": [{"type": "full-import", "agent": "ad", "page_size": _PAGE}]},
            "Delta": {"steps": [{"type": "delta-import", "agent": "ad", "page_size": _PAGE}]},
        }
        return Engine(config_from_dict(config, base_dir=self.env.tmp_path))

    def close(self) -> None:
        delete_subtree(self.admin_b, self.env.ou)
        self.admin_b.unbind()


@pytest.fixture
def two_dcs(ad_env: ADTestEnv, second_dc: ADSettings) -> Iterator[_TwoDcs]:
    with faulty_proxy((ad_env.ad.host, ad_env.ad.ldaps_port)) as relay:
        dcs = _TwoDcs(ad_env, second_dc, relay)
        try:
            yield dcs
        finally:
            dcs.close()


def _watermark(engine: Engine) -> Watermark:
    with engine.store.read() as conn:
        text = AgentStateRepository("ad").watermark(conn)
    assert text is not None
    return Watermark.loads(text)


def _pending(engine: Engine) -> dict[str, str]:
    """The pending imports staged for ``ad`` (anchor: add, update or delete)."""
    with engine.store.read() as conn:
        rows = ConnectorSpace(conn).search("ad", CsSearch(pending_import=True), 1000)
    return {row.anchor: str(row.pending_type) for row in rows}


def _assert_names_both(message: str, dcs: _TwoDcs, remedy: str) -> None:
    assert dcs.inv_a in message and dcs.inv_b in message, message
    assert remedy in message, message


@pytest.mark.parametrize("method", ["usn", "dirsync"])
def test_a_delta_whose_reconnect_reaches_another_dc_stops_and_keeps_its_watermark(
    two_dcs: _TwoDcs, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, method: str
) -> None:
    """Before: the USN delta read its first page on A, the rest on B, ended "success" with two of the six
    changes and saved a watermark past the other four (lost for good); the DirSync delta, switched right
    after its DC check, read B with A's cookie and ended "success" with none of them."""
    dcs = two_dcs
    engine = dcs.engine(delta_method=method)
    try:
        full = engine.run_profile("Full")
        assert full.status == "success", full.steps[0].as_dict()
        before = _watermark(engine)
        for name in dcs.guids:
            dcs.env.admin.modify(f"CN={name},{dcs.people}", {"description": [(MODIFY_REPLACE, ["changed"])]})
        if method == "usn":
            after_first_page(monkeypatch, dcs.to_b)
        else:  # DirSync reads all six in its first page: the switch comes right after the DC check
            check = _import.Importer.check_bases

            def check_then_switch(self: _import.Importer) -> None:
                check(self)
                dcs.to_b()

            monkeypatch.setattr(_import.Importer, "check_bases", check_then_switch)
        with caplog.at_level(logging.INFO):
            delta = engine.run_profile("Delta")
        after = _watermark(engine)
        staged = _pending(engine)
    finally:
        engine.close()
    step = delta.steps[0]
    assert step.status == "stopped-connector-error", step.as_dict()
    assert step.message.startswith("the connection to localhost was made again during the delta import"), step.message
    _assert_names_both(step.message, dcs, "Run a full import of agent 'ad'")
    assert after == before  # the next delta does not start past changes it never read
    assert (before.invocation_id, full.steps[0].counters.get("adds")) == (dcs.inv_a, _USERS)
    # what the engine kept: the people of A (their changes read on A before the switch), nothing from B
    assert staged == dict.fromkeys(dcs.guids.values(), "add"), staged
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_a_full_import_whose_reconnect_reaches_another_dc_stops_and_the_next_records_that_dc(
    two_dcs: _TwoDcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the second full import read two people on A and the rest on B (one other person there): it
    staged that one as an add, dropped the other four people of A as gone (not yet synchronized, they left
    the connector space; synchronized, they would have been staged deletes), ended "success" and saved A's
    position as the watermark for objects read on B."""
    dcs = two_dcs
    engine = dcs.engine(delta_method="usn")
    try:
        first = engine.run_profile("Full")
        after_first_page(monkeypatch, dcs.to_b)
        stopped = engine.run_profile("Full")
        staged = _pending(engine)
        monkeypatch.undo()
        again = engine.run_profile("Full")  # all on B now: it records B's position
        recorded = _watermark(engine)
    finally:
        engine.close()
    assert first.status == "success" and first.steps[0].counters.get("adds") == _USERS, first.steps[0].as_dict()
    step = stopped.steps[0]
    assert step.status == "stopped-connector-error", step.as_dict()
    assert step.message.startswith("the connection to localhost was made again during the full import"), step.message
    _assert_names_both(step.message, dcs, "Run the full import of agent 'ad' again")
    assert staged == dict.fromkeys(dcs.guids.values(), "add"), staged  # A's people, none deleted; nothing of B
    assert recorded.invocation_id == dcs.inv_b, again.steps[0].as_dict()


def test_a_delta_whose_dc_goes_down_part_way_and_fails_over_to_another_dc_stops_naming_both(
    ad_env: ADTestEnv, second_dc: ADSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list of DCs (host, then fallback_hosts): the first resets every connection after the delta's first
    page, the reconnect fails over to the second, a directory state of its own. The delta stops before
    reading anything there, names both DCs and the failover, and keeps its watermark (USNs of the first DC
    mean nothing on the second)."""
    first_address, second_address = (f"127.{n}.{random.randint(1, 250)}.{random.randint(2, 250)}" for n in (201, 202))
    with faulty_proxy((second_dc.host, second_dc.ldaps_port), (second_address, 0)) as to_b:
        upstream = (ad_env.ad.host, ad_env.ad.ldaps_port)
        with faulty_proxy(upstream, (first_address, to_b.port)) as to_a:
            dcs = _TwoDcs(ad_env, second_dc, to_a)
            # the relays' addresses are in no certificate: validation is not what is under test here
            engine = dcs.engine(
                host=first_address,
                fallback_hosts=[second_address],
                port=to_b.port,
                tls_validate=False,
                delta_method="usn",
            )
            try:
                full = engine.run_profile("Full")
                before = _watermark(engine)
                for name in dcs.guids:
                    ad_env.admin.modify(f"CN={name},{dcs.people}", {"description": [(MODIFY_REPLACE, ["changed"])]})
                after_first_page(monkeypatch, to_a.reset)
                delta = engine.run_profile("Delta")
                after = _watermark(engine)
            finally:
                engine.close()
                dcs.close()
    assert full.status == "success", full.steps[0].as_dict()
    assert before.host == first_address and before.invocation_id == dcs.inv_a
    step = delta.steps[0]
    assert step.status == "stopped-connector-error", step.as_dict()
    assert step.message.startswith(
        f"the connection to {first_address} was made again during the delta import of agent 'ad' (it broke, or a "
        f"Kerberos ticket was renewed) and reached another directory state at {second_address} ({first_address} "
        "did not answer): "
    ), step.message
    _assert_names_both(step.message, dcs, "Run a full import of agent 'ad'")
    assert after == before
