"""The shipped sample configuration loads, validates against the metaverse schema, and builds every agent."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from connector.config import ConfigError, load_config
from connector.demo import AD_SNAPSHOT_TYPE, derive_config, dump_toml, load_sample, load_sample_document, sample_path
from connector.engine import Engine, open_connector

SITE_ENV = {
    "MVSYNC_EXO_TENANT_ID": "contoso.onmicrosoft.com",
    "MVSYNC_EXO_CLIENT_ID": "00000000-0000-0000-0000-000000000001",
    "MVSYNC_AD_HOST": "dc1.contoso.example",
    "MVSYNC_AD_CA_FILE": "/etc/ssl/certs/ca-certificates.crt",
    "MVSYNC_AD_BIND_DN": "svc-mvsync@contoso.example",
    "MVSYNC_AD_PASSWORD": "not-a-real-password",
    "MVSYNC_AD_BASE_DN": "OU=Staff,DC=contoso,DC=example",
    "MVSYNC_EWS_URL": "https://mail.contoso.example/EWS/Exchange.asmx",
    "MVSYNC_EWS_USERNAME": "CONTOSO\\svc-mvsync",
    "MVSYNC_EWS_PASSWORD": "not-a-real-password",
}

MIM_PROFILES = (
    "Full Import (Stage Only)",
    "Delta Import (Stage Only)",
    "Full Synchronization",
    "Delta Synchronization",
    "Export",
)


@pytest.fixture
def site_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in SITE_ENV.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "hr").mkdir()
    monkeypatch.setenv("MVSYNC_HR_PHOTO_DIR", str(tmp_path / "hr"))
    monkeypatch.setenv("MVSYNC_EWS_MAILBOX_FILE", str(tmp_path / "mailboxes.txt"))


def test_sample_validates_and_builds_every_agent(site_env: None, tmp_path: Path) -> None:
    config = load_config(sample_path())
    engine = Engine(config.model_copy(update={"store": config.store.model_copy(update={"url": "sqlite://"})}))
    try:
        engine.validate()
        for agent in ("exo", "exs", "ad", "hr"):
            connector = open_connector(config, agent)  # resolves env refs and validates the settings
            assert connector.get_schema().object_classes
    finally:
        engine.close()
    assert set(MIM_PROFILES) <= set(config.run_profiles)
    cycle = config.run_profiles["Delta Cycle"].steps
    kinds = [(s.type.value, s.agent) for s in cycle]
    assert kinds[-3:] == [("export", "ad"), ("delta-import", "ad"), ("delta-sync", "ad")]
    for profile in ("Export", "Delta Cycle", "Full Cycle"):
        export = next(s for s in config.run_profiles[profile].steps if s.type.value == "export")
        assert export.deletion_threshold is not None
        assert "thumbnailPhoto" in export.deletion_threshold.attributes
    flow = config.agents["ad"].export_flow[0]
    assert (flow.mv, flow.cs, flow.allow_null) == ("photo", "thumbnailPhoto", True)
    assert flow.transform == "thumbnail(size=96, max_bytes=10240)"
    assert config.metaverse.precedence["photo"] == ("exo", "exs", "hr")


def test_sample_secrets_come_from_the_environment(site_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MVSYNC_AD_PASSWORD")
    config = load_config(sample_path())
    with pytest.raises(ConfigError, match="MVSYNC_AD_PASSWORD"):
        open_connector(config, "ad")


def test_demo_writer_round_trips_the_sample() -> None:
    sample = load_sample()
    assert tomllib.loads(dump_toml(sample)) == sample


def test_the_demo_configuration_keeps_the_sample_comments(tmp_path: Path) -> None:
    """`mvsync demo` writes the sample with its site settings changed; the explanations stay with the
    settings and rules they explain, and the values are those of the plain-dict derivation."""
    site: dict[str, Any] = {
        "store_url": "sqlite:///mvsync.db",
        "data_dir": "data",
        "exo": {**load_sample()["agents"]["exo"]["settings"], "graph_url": "https://127.0.0.1:8443/v1.0"},
        "hr": {"path": str(tmp_path / "hr")},
        "ad_type": AD_SNAPSHOT_TYPE,
        "ad": {"snapshot": "ad/directory.ldif", "ldif_output": "ad/changes.ldif"},
    }
    written = dump_toml(derive_config(load_sample_document(), **site), header="# by the demo\n")

    assert tomllib.loads(written) == derive_config(load_sample(), **site)
    sample_text = sample_path().read_text(encoding="utf-8")
    kept = [
        "# Photo changes never show in users/delta: each user's photo ETag is probed at most this often.",
        "# Ranked import precedence: highest first. Attributes not listed rank agents in [agents] order.",
    ]
    for comment in kept:
        assert comment in sample_text and comment in written
    assert written.startswith("# by the demo\n")
    config = tomllib.loads(written)
    assert config["agents"]["exo"]["settings"]["graph_url"] == "https://127.0.0.1:8443/v1.0"
    assert "exs" not in config["agents"]  # no on-premises Exchange: its agent and steps go
    assert all(step["agent"] != "exs" for p in config["run_profiles"].values() for step in p["steps"])
    assert '  { type = "full-import", agent = "hr", page_size = 500 },\n' in written  # the steps keep their layout
