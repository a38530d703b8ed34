"""The connector SDK contract: schema validation, the PSMA shorthand, changes and registration."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from connector.config import ConfigError, validate_settings
from connector.registry import available_connectors, load_connector
from connector.sdk import (
    Attribute,
    AttributeAccess,
    AttributeType,
    ConfigurationError,
    ConnectorSettings,
    CSEntryChange,
    ImportMode,
    ImportRequest,
    ObjectClass,
    ObjectModificationType,
    paginate_list,
    parse_psma_schema,
)
from connector.store import decode_value, encode_value


def test_psma_shorthand_parses_prefixes_types_and_multivalues() -> None:
    schema = parse_psma_schema(
        {
            "user": [
                "objectClass|string",
                "Anchor-id|string",
                "proxyAddresses|string[]",
                "ImportOnly-photo|binary",
                "ExportOnly-note|string",
                "enabled|boolean",
                "size|integer",
                "odd|weird",
            ]
        }
    )
    oc = schema.object_class("USER")
    assert oc is not None and oc.anchor == "id"
    assert oc.attribute("proxyAddresses").multivalued  # type: ignore[union-attr]
    assert oc.attribute("photo").access == AttributeAccess.IMPORT_ONLY  # type: ignore[union-attr]
    assert oc.attribute("note").access == AttributeAccess.EXPORT_ONLY  # type: ignore[union-attr]
    assert oc.attribute("odd").type == AttributeType.STRING  # type: ignore[union-attr]  (PSMA falls back to string)
    assert oc.attribute("objectClass") is None


def test_exactly_one_anchor_is_required() -> None:
    with pytest.raises(ValueError, match="exactly one Anchor-"):
        parse_psma_schema({"user": ["id|string"]})
    with pytest.raises(ValueError, match="exactly one Anchor-"):
        parse_psma_schema({"user": ["Anchor-a|string", "Anchor-b|string"]})
    with pytest.raises(ValidationError, match="not one of its attributes"):
        ObjectClass(name="user", anchor="missing", attributes=(Attribute(name="id"),))
    with pytest.raises(ValidationError, match="single-valued"):
        ObjectClass(name="user", anchor="id", attributes=(Attribute(name="id", multivalued=True),))
    with pytest.raises(ValidationError, match="declared twice"):
        ObjectClass(name="user", anchor="id", attributes=(Attribute(name="id"), Attribute(name="id")))


def test_attribute_type_checks() -> None:
    assert Attribute(name="n", type=AttributeType.INTEGER).accepts(3)
    assert not Attribute(name="n", type=AttributeType.INTEGER).accepts(True)
    assert Attribute(name="p", type=AttributeType.BINARY).accepts(b"x")
    assert Attribute(name="d", type=AttributeType.DATETIME).accepts(dt.datetime.now(dt.UTC))


def test_change_constructors_drop_nulls_and_name_changed_attributes() -> None:
    change = CSEntryChange.add("user", "1", {"a": "x", "b": None, "c": []})
    assert change.attributes == {"a": "x"} and change.modification == ObjectModificationType.ADD
    assert change.changed_attribute_names() == ["a"]
    err = CSEntryChange.import_error("9", "read-error")
    assert err.error is not None and err.error.detail == "No error details provided"


def test_paginate_list_pages_like_psma() -> None:
    items = list(range(25))
    page = paginate_list(
        items, ImportRequest(ImportMode.FULL, page_size=10), lambda i: CSEntryChange.add("c", str(i), {})
    )
    assert len(page.entries) == 10 and page.more_to_import and page.page_token == "10"
    last = paginate_list(
        items,
        ImportRequest(ImportMode.FULL, page_size=10, page_token="20"),
        lambda i: CSEntryChange.add("c", str(i), {}),
    )
    assert len(last.entries) == 5 and not last.more_to_import and last.page_token is None


def test_builtin_connectors_register_by_entry_point() -> None:
    names = {c.name for c in available_connectors()}
    assert {"exchange-online-photos", "active-directory", "photo-folder", "active-directory-snapshot"} <= names
    assert "generated" not in names  # the benchmarks' synthetic agent is no production entry point
    assert load_connector("tests.engine.memory:MemoryConnector").__name__ == "MemoryConnector"
    with pytest.raises(ConfigurationError, match="unknown name 'nope'"):
        load_connector("nope")
    with pytest.raises(ConfigurationError, match="not name a connector"):
        load_connector("pathlib:Path")


class _SecretSettings(ConnectorSettings):
    user: str
    password: SecretStr


def test_secrets_only_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "mvsync.toml"
    with pytest.raises(ConfigError) as info:
        validate_settings(
            _SecretSettings, {"user": "u", "password": "hunter2"}, key="agents.ad.settings", file=cfg, base_dir=tmp_path
        )
    assert f"{cfg}: agents.ad.settings.password: secrets may only be given" in str(info.value)
    assert "hunter2" not in str(info.value)
    monkeypatch.setenv("MY_SECRET", "s3cret")
    ok = validate_settings(
        _SecretSettings, {"user": "u", "password": {"env": "MY_SECRET"}}, key="k", file=cfg, base_dir=tmp_path
    )
    assert ok.password.get_secret_value() == "s3cret"  # type: ignore[attr-defined]
    (tmp_path / "pw").write_text("from-file\n")
    ok = validate_settings(
        _SecretSettings, {"user": "u", "password": {"file": "pw"}}, key="k", file=cfg, base_dir=tmp_path
    )
    assert ok.password.get_secret_value() == "from-file"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="MISSING_VAR is not set"):
        validate_settings(
            _SecretSettings, {"user": "u", "password": {"env": "MISSING_VAR"}}, key="k", file=cfg, base_dir=tmp_path
        )


def test_value_encoding_round_trips_and_cannot_be_spoofed() -> None:
    blobs: dict[str, bytes] = {}
    photo = encode_value(b"\xff\xd8jpeg", blobs.__setitem__)
    assert photo.startswith("\x00b:") and len(blobs) == 1
    hostile = encode_value("\x00b:" + "0" * 64 + ":3", blobs.__setitem__)
    assert hostile != "\x00b:" + "0" * 64 + ":3"  # a string can never pose as a blob reference
    assert decode_value(hostile, blobs.__getitem__) == "\x00b:" + "0" * 64 + ":3"
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert decode_value(encode_value(when, blobs.__setitem__), blobs.__getitem__) == when
    assert encode_value(["b", "a", "b"], blobs.__setitem__) == ["a", "b"]
    assert decode_value(photo, blobs.__getitem__) == b"\xff\xd8jpeg"


class _PathSettings(ConnectorSettings):
    folder: Path
    ca_file: Path | None = None


def test_relative_setting_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "conf" / "mvsync.toml"
    got = validate_settings(
        _PathSettings, {"folder": "photos", "ca_file": "/etc/ssl/ca.pem"}, key="k", file=cfg, base_dir=cfg.parent
    )
    assert got.folder == cfg.parent / "photos"  # type: ignore[attr-defined]
    assert got.ca_file == Path("/etc/ssl/ca.pem")  # type: ignore[attr-defined]
