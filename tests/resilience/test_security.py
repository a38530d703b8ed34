"""Security defaults: secrets never leak, the token cache is sealed, TLS stays on, exports stay in scope.

A real cycle runs with known test secrets (the AD password, the seed refresh token, the token cache
key; an app-mode import adds a client secret), then every place text ends up is searched for them:
DEBUG logs, run history and errors, the whole store file, exception texts, and CLI output.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from ldap3 import BASE

from connector.bench.resilience import _exo_only_config
from connector.config import ConfigError, config_from_dict, load_config
from connector.emulator import GraphEmulator
from connector.engine import Engine
from connector.engine._agents import open_connector
from connector.sdk import CSEntryChange, ScopeViolationError
from tests.harness.crash import CrashLab, lab_emulator_config, lab_tag, run_cli
from tests.harness.samba_dc import ADSettings, UserSpec, connect, create_users, delete_subtree, ensure_ou
from tests.imaging.images import photo as jpeg


def _secrets_found(text: str | bytes, secrets: dict[str, str]) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [name for name, value in secrets.items() if value.encode() in data]


@pytest.mark.samba
def test_secrets_never_appear_anywhere(
    samba_ad: ADSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    with GraphEmulator(lab_emulator_config(users=12, seed=4)) as emu:
        lab = CrashLab(tmp_path, emu, ad=samba_ad, ou=f"OU=mvsync-security-{lab_tag()}")
        try:
            scenario = lab.prepare("world")
            secrets = {
                "refresh token": str(emu.info["refresh_token"]),
                "AD password": samba_ad.password,
                "token cache key": (scenario.root / "secrets" / "token-cache.key").read_text().strip(),
                "client secret": str(emu.info["client_secret"]),
            }
            # the most talkative logs there are: debug level, JSON lines with every extra= field
            monkeypatch.setenv("MVSYNC_LOG_LEVEL", "DEBUG")
            monkeypatch.setenv("MVSYNC_LOG_FORMAT", "json")
            cli = lab.run(scenario, "Full Cycle")
            assert cli.returncode in (0, 3), cli.stderr
            assert '"level": "debug"' in cli.stderr or '"level": "info"' in cli.stderr  # logs were written
            engine = Engine(load_config(scenario.config_path))
            try:
                engine.run_profile("Delta Cycle")
            finally:
                engine.close()
            outputs = [cli.stdout, cli.stderr]
            for args in (["history", "list", "--json"], ["history", "show", "1", "--json"], ["pending-exports", "ad"]):
                done = run_cli([*args, "-c", str(scenario.config_path)], workdir=tmp_path / "cli", shim=lab.shim)
                outputs += [done.stdout, done.stderr]
            # an authentication failure's exception text, with a wrong client secret in app mode
            (tmp_path / "wrong-secret").write_text("not-the-secret")
            emu.admin.revoke_refresh_tokens()
            app = _exo_only_config(
                tmp_path / "app", emu.info, auth_mode="app", client_secret={"file": str(tmp_path / "wrong-secret")}
            )
            failing = Engine(app)
            try:
                failed = failing.run_profile("Full Import")
            finally:
                failing.close()
            assert failed.status.startswith("stopped-"), failed.as_dict()
            outputs.append(failed.steps[0].message)
            good = _exo_only_config(
                tmp_path / "app-good",
                emu.info,
                auth_mode="app",
                client_secret={"file": str(_write(tmp_path / "secret", secrets["client secret"]))},
            )
            ok = Engine(good)
            try:
                assert not ok.run_profile("Full Import").status.startswith("stopped-")
            finally:
                ok.close()
        finally:
            lab.cleanup()
    logs = "\n".join(r.getMessage() + " " + str(r.args) + " " + (r.exc_text or "") for r in caplog.records)
    assert _secrets_found(logs, secrets) == []
    assert _secrets_found("\n".join(outputs), secrets) == []
    for store in (scenario.root / "mvsync.db", tmp_path / "app" / "mvsync.db", tmp_path / "app-good" / "mvsync.db"):
        for path in store.parent.glob(store.name + "*"):  # the database, its WAL and lock files
            if path.is_file():
                assert _secrets_found(path.read_bytes(), secrets) == [], path
    for path in (scenario.root / "data").rglob("*"):  # agent state: token cache, photo state
        if path.is_file():
            assert _secrets_found(path.read_bytes(), {k: v for k, v in secrets.items() if k != "token cache key"}) == []
    cache = scenario.root / "data" / "exo" / "token-cache.bin"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert cache.read_bytes().startswith(b"gAAAAA")  # a Fernet token: encrypted at rest


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_tls_validation_cannot_be_switched_off_silently_for_graph(tmp_path: Path) -> None:
    with GraphEmulator(lab_emulator_config(users=4, seed=2)) as emu:
        for key in ("verify", "tls_validate", "insecure"):
            with pytest.raises(ConfigError, match=key):
                open_connector(_exo_only_config(tmp_path / key, emu.info, **{key: False}), "exo")
        # without the emulator's CA the certificate is refused, even with the bundle variables blanked
        config = _exo_only_config(tmp_path / "no-ca", emu.info, ca_bundle=None)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("REQUESTS_CA_BUNDLE", "")
            mp.setenv("CURL_CA_BUNDLE", "")
            engine = Engine(config)
            try:
                result = engine.run_profile("Full Import")
            finally:
                engine.close()
    assert result.status.startswith("stopped-"), result.as_dict()


def _ad_settings(ad: ADSettings, tmp_path: Path, base: str, **extra: object) -> dict[str, object]:
    return {
        "host": ad.host,
        "port": ad.ldaps_port,
        "bind_dn": ad.bind_dn,
        "password": {"file": str(_write(tmp_path / "ad-pw", ad.password))},
        "base_dns": [base],
        **({"ca_file": str(ad.ca_cert)} if ad.ca_cert else {}),
        **extra,
    }


@pytest.mark.samba
def test_an_explicit_insecure_tls_option_warns_on_every_run(
    samba_ad: ADSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_from_dict(
        {
            "store": {"url": "sqlite:///mvsync.db"},
            "agents": {
                "ad": {
                    "type": "active-directory",
                    "settings": _ad_settings(samba_ad, tmp_path, f"CN=Users,{samba_ad.base_dn}", tls_validate=False),
                }
            },
            "run_profiles": {"Import": {"steps": [{"type": "full-import", "agent": "ad"}]}},
        },
        base_dir=tmp_path,
    )
    caplog.set_level(logging.WARNING)
    engine = Engine(config)
    try:
        for _ in range(2):
            engine.run_profile("Import")
    finally:
        engine.close()
    warnings = [r for r in caplog.records if "tls_validate = false" in r.getMessage()]
    assert len(warnings) == 2


@pytest.mark.samba
def test_exports_outside_the_base_dns_or_flows_are_refused(samba_ad: ADSettings, tmp_path: Path) -> None:
    tag = lab_tag()
    inside, outside = f"OU=mvsync-in-{tag},{samba_ad.base_dn}", f"OU=mvsync-out-{tag},{samba_ad.base_dn}"
    conn = connect(samba_ad)
    try:
        for ou in (inside, outside):
            delete_subtree(conn, ou)
            ensure_ou(conn, ou)
        guids = create_users(conn, outside, [UserSpec(f"{tag}-out")], samba_ad.upn_suffix)
        guids |= create_users(conn, inside, [UserSpec(f"{tag}-in")], samba_ad.upn_suffix)
        usn_before = _usns(conn, [f"CN={tag}-out,{outside}", f"CN={tag}-in,{inside}"])
        config = config_from_dict(
            {
                "agents": {
                    "ad": {
                        "type": "active-directory",
                        "settings": _ad_settings(samba_ad, tmp_path, inside),
                        "export_flow": [{"object_class": "user", "mv": "photo", "cs": "thumbnailPhoto"}],
                    }
                }
            },
            base_dir=tmp_path,
        )
        connector = open_connector(config, "ad")
        connector.open()
        try:
            photo = jpeg(size=96)  # a value the agent would write anywhere in scope
            elsewhere = CSEntryChange.update(
                "user", guids[f"{tag}-out"], [_replace("thumbnailPhoto", photo)], dn=f"CN={tag}-out,{inside}"
            )
            elsewhere.identifier = "1"
            (result,) = connector.export([elsewhere])
            assert result.error_name == "scope-violation", result
            unnamed = CSEntryChange.update("user", guids[f"{tag}-in"], [_replace("description", "pwned")])
            unnamed.identifier = "2"
            with pytest.raises(ScopeViolationError, match="no export flow names it"):
                connector.export([unnamed])
        finally:
            connector.close()
        assert _usns(conn, [f"CN={tag}-out,{outside}", f"CN={tag}-in,{inside}"]) == usn_before  # nothing written
    finally:
        for ou in (inside, outside):
            delete_subtree(conn, ou)
        conn.unbind()


def _replace(name: str, value: object) -> object:
    from connector.sdk import AttributeChange

    return AttributeChange.replace(name, value)  # type: ignore[arg-type]


def _usns(conn: object, dns: list[str]) -> list[int]:
    out = []
    for dn in dns:
        conn.search(dn, "(objectClass=*)", BASE, attributes=["uSNChanged"])  # type: ignore[attr-defined]
        out.append(int(conn.response[0]["raw_attributes"]["uSNChanged"][0]))  # type: ignore[attr-defined]
    return out
