"""Building connectors from configuration, and loading the metaverse schema."""

from __future__ import annotations

import datetime as _dt
import importlib.resources
import logging
import os
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from connector.config import (
    ConfigError,
    MvsyncConfig,
    beside_config,
    did_you_mean,
    format_validation_error,
    validate_settings,
)
from connector.files import TextDecodeError, read_text
from connector.net import check_trust_environment
from connector.registry import load_connector
from connector.sdk import (
    Attribute,
    AttributeType,
    ConfigurationError,
    Connector,
    ConnectorContext,
    ConnectorSettings,
    ObjectClass,
    Schema,
)

__all__ = [
    "agent_schema",
    "load_metaverse_schema",
    "open_connector",
    "reauthorize_command",
    "rule_problems",
    "setting_paths",
    "trust_problem",
]


def reauthorize_command(config: MvsyncConfig, agent: str) -> str:
    """The exact command that re-authorizes ``agent`` (for authentication error messages)."""
    cfg = f" -c {shlex.quote(str(config.path))}" if config.path else ""
    return f"mvsync auth login {shlex.quote(agent)}{cfg}"


def open_connector(
    config: MvsyncConfig,
    agent: str,
    *,
    dry_run: bool = False,
    export_attributes: dict[str, frozenset[str]] | None = None,
) -> Connector[Any]:
    """Instantiate the connector of ``agent`` with validated settings (not yet opened)."""
    cls = _connector_class(config, agent)
    settings = _settings(config, agent, cls)
    assert isinstance(settings, ConnectorSettings)
    if export_attributes is None:
        export_attributes = export_scope(config, agent)
    data_dir = config.resolved_data_dir / agent
    context = ConnectorContext(
        agent=agent,
        data_dir=data_dir,
        logger=logging.getLogger(f"mvsync.agent.{agent}"),
        config_file=config.path,
        dry_run=dry_run,
        export_attributes=export_attributes,
        reauthorize_command=reauthorize_command(config, agent),
    )
    return cls(settings, context)


def agent_schema(config: MvsyncConfig, agent: str) -> Schema:
    """The connector schema of ``agent`` (``mvsync schema``), from the settings it depends on alone
    when its connector declares them (``Connector.schema_settings``).

    Why: printing a schema is what one does before writing the rules, often on a workstation without
    the agent's secrets; it asked for every setting (the client secret's file, the variables of the
    tenant), none of which any schema reads. A setting the schema does need is named, as for a run.
    """
    cls = _connector_class(config, agent)
    if cls.schema_settings is None:
        return open_connector(config, agent).get_schema()
    return cls.schema_for(dict(_settings(config, agent, cls, only=cls.schema_settings)))


def _connector_class(config: MvsyncConfig, agent: str) -> type[Connector[Any]]:
    """The connector class of a configured ``agent``; an unknown agent or type is a ``ConfigError``."""
    if agent not in config.agents:
        known = ", ".join(sorted(config.agents)) or "none"
        msg = f"unknown agent {agent!r} (configured agents: {known})"
        raise ConfigError(msg)
    try:
        return load_connector(config.agents[agent].type)
    except ConfigurationError as exc:
        raise ConfigError(f"{config.path or 'config'}: agents.{agent}.type: {exc}") from None


def _settings(
    config: MvsyncConfig, agent: str, cls: type[Connector[Any]], only: tuple[str, ...] | None = None
) -> BaseModel:
    """``agent``'s settings validated against its connector's model (``only``: just those settings)."""
    return validate_settings(
        cls.settings_model,
        dict(config.agents[agent].settings),
        key=f"agents.{agent}.settings",
        file=config.path,
        base_dir=config.base_dir,
        only=only,
    )


def _certificate_problem(path: Path) -> str | None:
    """Why a PEM certificate file is unusable (unreadable, not PEM, expired), or None."""
    from cryptography import x509

    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        return f"{path} holds no PEM certificate"
    now = _dt.datetime.now(_dt.UTC)
    expired = [c for c in certs if c.not_valid_after_utc < now]
    if expired:
        subject = expired[0].subject.rfc4514_string()
        return f"{path}: certificate {subject} expired on {expired[0].not_valid_after_utc:%Y-%m-%d}"
    return None


def setting_paths(settings: Any, agent: str = "") -> Iterator[tuple[str, Path, str | None]]:
    """Every path an agent's settings name: (field, path, what is wrong with it or None).

    Why: a run checks these before its first step (and ``mvsync doctor`` reports them), so a
    missing CA file or folder stops the run before any step has run instead of halfway through.
    Certificates (``*ca*``, ``*cert*``) must parse and be current; key files must exist; a path marked
    ``MUST_EXIST`` (an input: a photo folder) must exist and be readable; any other path must be
    readable, or creatable if it does not exist yet (an output). ``agent``: its name, for the command
    that makes a missing key file (``_key_problem``).
    """
    unused = settings.unused_settings()  # a file nothing reads is neither checked nor required
    for name, info in type(settings).model_fields.items():
        path = getattr(settings, name, None)
        if not isinstance(path, Path) or name in unused:
            continue
        lowered = name.lower()
        if "ca" in lowered.split("_") or "cert" in lowered:
            yield name, path, _certificate_problem(path)
        elif "key" in lowered:
            yield name, path, _key_problem(path, info.json_schema_extra, agent)
        elif isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("must_exist"):
            yield name, path, _input_problem(path)
        else:
            yield name, path, _path_problem(path)


def trust_problem(settings: Any) -> str | None:
    """What is wrong with the CA file the environment names for an HTTPS agent, or None: REQUESTS_CA_BUNDLE
    and the like (``connector.net.check_trust_environment``), the message naming the variable and the file.

    An HTTPS agent is one with a ``ca_bundle`` setting, the one ``connector.net.verifying_session``
    takes: the variables apply to it only while that setting is unset (``setting_paths`` checks it
    when set). Why here: a run checks it with the settings' paths, before its first step.
    """
    if "ca_bundle" not in type(settings).model_fields:
        return None
    try:
        check_trust_environment(getattr(settings, "ca_bundle", None))
    except ConfigurationError as exc:
        return str(exc)
    return None


def _key_problem(path: Path, extra: Any, agent: str) -> str | None:
    """A key file must be a file. Why the words: a missing one read "is not readable", as if its
    permissions were wrong, before the first sign-in that makes it; a setting marked ``made_by`` (a
    command, ``{agent}`` in it the agent's name) says to run that command."""
    if path.is_file():
        return None
    if path.exists():
        return f"{path} is not a file"
    made_by = extra.get("made_by") if isinstance(extra, dict) else None
    if isinstance(made_by, str):
        return f"{path} does not exist: run `{made_by.format(agent=agent or '<agent>')}`, which creates it"
    return f"{path} does not exist"


def _input_problem(path: Path) -> str | None:
    """An input must be there: a share that is not mounted or a mapped drive of another logon session
    (Windows: a scheduled task does not see the user's drive letters; use the UNC path) reads as missing."""
    if not path.exists():
        return f"{path} does not exist or cannot be reached (a share not mounted? a drive letter of another session?)"
    return _path_problem(path)


def _path_problem(path: Path) -> str | None:
    """A path that exists must be readable; one still to be created (an output the agent makes,
    with its folders) must have a folder, not a file, as its nearest existing ancestor."""
    if path.exists():
        return None if os.access(path, os.R_OK) else f"{path} is not readable"
    ancestor = next((p for p in path.parents if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        return f"{path} cannot be created: {ancestor} is a file, not a folder"
    return None


def rule_problems(config: MvsyncConfig, agent: str, schema: Schema) -> list[str]:
    """The sync rules of ``agent`` that name an object class or an imported attribute its connector's
    ``schema`` does not have, each as ``file: key: what is wrong`` with the name it most resembles.

    Why at the import step, not when the configuration loads: only the connector knows its schema
    (Active Directory's can depend on its settings), and the import step asks for it anyway. Before,
    a flow from ``EXOFoto`` (for ``EXOPhoto``) or a projection of ``EXOUsers`` was accepted, every
    step succeeded, and no photo ever reached the metaverse (found by QA). Object classes match
    without regard to case, as the engine matches them; an attribute an import flow or a join reads
    must be one of its class's (case aside: a connector names its attributes in its own spelling).
    Export flows' attributes are the target's to judge: the agent's export refuses what it cannot write.
    """
    cfg = config.agents[agent]
    where = f"{config.path}: agents.{agent}" if config.path else f"agents.{agent}"
    classes = {c.name.casefold(): c for c in schema.object_classes}
    known = [c.name for c in schema.object_classes]
    problems: list[str] = []
    rules: list[tuple[str, str, tuple[str, ...]]] = [
        (f"projection[{i}]", rule.object_class, ()) for i, rule in enumerate(cfg.projection)
    ]
    rules += [(f"join[{i}]", rule.object_class, tuple(c.cs for c in rule.match)) for i, rule in enumerate(cfg.join)]
    rules += [(f"import_flow[{i}]", flow.object_class, (flow.cs,)) for i, flow in enumerate(cfg.import_flow)]
    rules += [(f"export_flow[{i}]", flow.object_class, ()) for i, flow in enumerate(cfg.export_flow)]
    for key, object_class, attributes in rules:
        found = classes.get(object_class.casefold())
        if found is None:
            hint = did_you_mean(object_class, known) or f" (it has {', '.join(known)})"
            problems.append(f"{where}.{key}.object_class: the {agent} agent has no object class {object_class!r}{hint}")
            continue
        names = [a.name for a in found.attributes]
        folded = {name.casefold() for name in names}
        for attribute in attributes:
            if attribute.casefold() not in folded:
                field = "cs" if key.startswith("import_flow") else "match.cs"
                hint = did_you_mean(attribute, names) or f"; `mvsync schema {agent}` lists them"
                problems.append(
                    f"{where}.{key}.{field}: object class {found.name!r} of the {agent} agent has no attribute "
                    f"{attribute!r}{hint}"
                )
    return problems


def export_scope(config: MvsyncConfig, agent: str) -> dict[str, frozenset[str]]:
    """Per object class, the attributes some export flow of ``agent`` names (the scope guard)."""
    scope: dict[str, set[str]] = {}
    for flow in config.agents[agent].export_flow:
        scope.setdefault(flow.object_class, set()).add(flow.cs)
    return {k: frozenset(v) for k, v in scope.items()}


def _schema_dir() -> Path:
    """``schema/`` shipped in the wheel, or the repository's folder in an editable install."""
    packaged = Path(str(importlib.resources.files("connector"))) / "_data" / "schema"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "schema"


def load_metaverse_schema(config: MvsyncConfig) -> Schema:
    """The metaverse object types: a shipped schema by name, or a TOML file path."""
    ref = config.metaverse.schema_
    path = _schema_file(config, ref)
    try:
        data = tomllib.loads(read_text(path))
    except (OSError, TextDecodeError, tomllib.TOMLDecodeError) as exc:
        msg = f"{path}: cannot read the metaverse schema: {exc}"
        raise ConfigError(msg) from None
    types = data.get("object_types")
    if not isinstance(types, dict) or not types:
        msg = f"{path}: a metaverse schema needs at least one [object_types.NAME] table (as schema/metaverse.toml)"
        raise ConfigError(msg)
    if not ref.endswith(".toml") and ref not in types:
        msg = f"{config.path or 'config'}: metaverse.schema: no shipped object type {ref!r} (have: {', '.join(types)})"
        raise ConfigError(msg)
    return Schema(object_classes=tuple(_object_type(path, name, body) for name, body in types.items()))


def _schema_file(config: MvsyncConfig, ref: str) -> Path:
    """The schema file ``metaverse.schema`` names: the user's own ``*.toml`` (which must exist: a typo
    must not quietly mean the shipped schema), or the shipped one for a shipped type's name."""
    if not ref.endswith(".toml"):
        return _schema_dir() / "metaverse.toml"
    candidate = beside_config(config.base_dir, ref)
    if not candidate.is_file():
        msg = (
            f"{config.path or 'config'}: metaverse.schema: {candidate} does not exist (a name ending in .toml is "
            "your own schema file, relative to the configuration; or name a shipped object type: person)"
        )
        raise ConfigError(msg)
    return candidate


def _object_type(path: Path, name: str, body: Any) -> ObjectClass:
    """One ``[object_types.NAME]`` table as an object class anchored on the metaverse's own ``id``."""
    key = f"object_types.{name}"
    attributes = body.get("attributes", []) if isinstance(body, dict) else None
    if not isinstance(attributes, list):
        raise ConfigError(f"{path}: {key}.attributes: should be an array of {{ name = ..., type = ... }} tables")
    parsed = []
    for i, raw in enumerate(attributes):
        try:
            parsed.append(Attribute.model_validate(raw))
        except ValidationError as exc:
            raise ConfigError(
                format_validation_error(exc, file=path, prefix=f"{key}.attributes[{i}]", model=Attribute)
            ) from None
    anchor = Attribute(name="id", type=AttributeType.STRING)
    try:
        return ObjectClass(name=name, anchor="id", attributes=(anchor, *parsed))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, file=path, prefix=key, model=ObjectClass)) from None
