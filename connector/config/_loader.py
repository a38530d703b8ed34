"""Reading ``mvsync.toml``: TOML, secret references, and errors that name the key and the file.

Any value may be written as ``{ env = "NAME" }`` or ``{ file = "/path" }`` (a file's content, in
UTF-8 with or without a BOM or UTF-16 with one, trailing newlines stripped: ``connector.secrets``).
Settings a connector declares as ``SecretStr`` accept *only* those references: a literal secret in a
configuration file ends up in backups and version control.
"""

from __future__ import annotations

import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError, create_model

from connector.config._hints import did_you_mean, toml_key
from connector.config._models import MvsyncConfig, beside_config
from connector.files import TextDecodeError, read_text
from connector.secrets import SecretFileError, read_secret_file

__all__ = [
    "ConfigError",
    "format_validation_error",
    "load_config",
    "resolve_refs",
    "secret_fields",
    "validate_settings",
]


class ConfigError(Exception):
    """A configuration problem; the message names the key and the file."""


def _where(file: Path | None, key: str) -> str:
    return f"{file}: {key}" if file else key


def format_validation_error(
    exc: ValidationError, *, file: Path | None, prefix: str = "", model: type[BaseModel] | None = None
) -> str:
    """One line per problem, each naming the key as it is written in TOML (``steps[0].type``).

    An error on a table or array that only echoes a deeper one (pydantic reports an array that
    lost its bad item as "too short") is left out: the deeper line says what to fix. ``model``, the
    model ``exc`` came from, lets an unknown key name the key of its table it resembles (a typo).
    """
    errors = exc.errors()
    locs = [tuple(err["loc"]) for err in errors]
    lines = []
    for err, loc in zip(errors, locs, strict=True):
        if any(len(other) > len(loc) and other[: len(loc)] == loc for other in locs):
            continue
        key = toml_key(prefix, loc)
        message = _unknown_key(err, model) if err["type"] == "extra_forbidden" else _message(err)
        lines.append(f"{_where(file, key)}: {message}" if key else f"{file or 'configuration'}: {message}")
    return "\n".join(lines)


_MESSAGES = {
    "extra_forbidden": "unknown key (check the spelling; see the sample configuration)",
    "missing": "required, but not given",
    "tuple_type": "should be an array ([...])",
    "list_type": "should be an array ([...])",
    "dict_type": "should be a table ({ ... } or a [section])",
    "model_type": "should be a table ({ ... } or a [section])",
}


def _message(err: Any) -> str:
    """Pydantic's message for one error, in the words of someone editing a TOML file."""
    if err["type"] in _MESSAGES:
        return _MESSAGES[err["type"]]
    if err["type"] in ("value_error", "assertion_error") and "error" in err.get("ctx", {}):
        return str(err["ctx"]["error"])  # a validator's own sentence, without pydantic's "Value error, "
    return str(err["msg"])


def _unknown_key(err: Any, model: type[BaseModel] | None) -> str:
    """An unknown key with the key of its table it resembles, or the table's keys when none does."""
    *table, name = err["loc"]
    known = _keys_at(model, table) if model is not None else []
    if not known:
        return _MESSAGES["extra_forbidden"]
    hint = did_you_mean(str(name), known)
    return f"unknown key{hint}" if hint else f"unknown key (the keys here: {', '.join(known)})"


def _keys_at(model: type[BaseModel], loc: list[Any]) -> list[str]:
    """The keys (as TOML spells them: aliases) of the table at ``loc`` inside ``model``; [] when not a model's."""
    annotation: Any = model
    for part in loc:
        annotation = _inner(annotation, part)
    annotation = _unwrap(annotation)
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return []
    return [f.alias or name for name, f in annotation.model_fields.items() if not f.exclude]


def _inner(annotation: Any, part: Any) -> Any:
    """The annotation one step (a field, a table's key, an array's index) inside ``annotation``."""
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields = annotation.model_fields
        field = fields.get(str(part)) or next((f for f in fields.values() if f.alias == part), None)
        return field.annotation if field is not None else None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is dict and args:
        return args[1]  # a table of tables: [agents.NAME]
    return args[0] if origin in (tuple, list) and args else None  # an array of tables: steps[0]


def _unwrap(annotation: Any) -> Any:
    """``X`` of ``X | None`` (an optional table)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        arms = [arm for arm in typing.get_args(annotation) if arm is not type(None)]
        return arms[0] if len(arms) == 1 else None
    return annotation


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("env", "file")


def resolve_refs(value: Any, *, key: str, file: Path | None, base_dir: Path) -> Any:
    """Replace ``{env=..}`` / ``{file=..}`` references by their values, recursively."""
    if _is_ref(value):
        kind, target = next(iter(value.items()))
        if not isinstance(target, str) or not target:
            msg = f"{_where(file, key)}: {{ {kind} = ... }} needs a non-empty string"
            raise ConfigError(msg)
        if kind == "env":
            if target not in os.environ:
                msg = (
                    f"{_where(file, key)}: environment variable {target} is not set "
                    "(export it, or use { file = ... })"
                )
                raise ConfigError(msg)
            return _env_value(target, where=_where(file, key))
        try:
            return read_secret_file(beside_config(base_dir, target), key=_where(file, key))
        except SecretFileError as exc:
            raise ConfigError(str(exc)) from None
    if isinstance(value, dict):
        return {k: resolve_refs(v, key=f"{key}.{k}", file=file, base_dir=base_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_refs(v, key=f"{key}[{i}]", file=file, base_dir=base_dir) for i, v in enumerate(value)]
    return value


def _env_value(name: str, *, where: str) -> str:
    """The value of the variable ``name``, refused when it is empty (or only blanks).

    Why: an empty value is a line ``NAME=`` in a systemd EnvironmentFile or a deployment template
    left unfilled, never a setting. Taken as it was, an empty path was the configuration's own
    folder (a photo-folder import of the wrong folder, ending 'success'), and an empty password or
    store.url failed later, in the bind or the store, without the variable's name.
    """
    value = os.environ[name]
    if not value.strip():
        msg = (
            f"{where}: environment variable {name} is set but empty (a line '{name}=' in an EnvironmentFile or "
            "an env file, or a template left unfilled): give it its value, or use { file = ... }"
        )
        raise ConfigError(msg)
    return value


def secret_fields(model: type[BaseModel]) -> set[str]:
    """The settings (names and aliases) of ``model`` that hold secrets: the loader accepts only
    ``{ env = .. }`` / ``{ file = .. }`` for them, and the console masks them."""
    names = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ()):
            names.add(name)
            if field.alias:
                names.add(field.alias)
    return names


def _path_fields(model: type[BaseModel]) -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if annotation is not None and (annotation is Path or Path in getattr(annotation, "__args__", ())):
            names.add(field.alias or name)
    return names


#: What TOML's double-quoted escapes turn a Windows path's ``\t``, ``\n``... into.
_ESCAPED = {"\t": "\\t (a tab)", "\n": "\\n (a line break)", "\r": "\\r", "\b": "\\b", "\f": "\\f"}
#: The advice for a Windows path in TOML, in the errors that point at one.
WINDOWS_PATH_HINT = (
    "in TOML's double quotes a backslash starts an escape: write Windows paths in single quotes "
    "('C:\\ProgramData\\mvsync\\photos') or with forward slashes (\"C:/ProgramData/mvsync/photos\")"
)


def _toml_hint(error: str) -> str | None:
    """What a TOML parse error most likely means, where tomllib's words do not say it.

    A Windows path in double quotes: ``"C:\\temp\\x"`` is "Unescaped '\\'", ``"C:\\Users"`` is "Invalid hex
    value" (``\\U`` starts an escape). A quote left open: "Illegal character '\\n'", which the Windows path
    hint was given for before, as its text holds a backslash (found by QA).
    """
    if error.startswith("Illegal character '\\n'"):
        return "a quoted value is not closed before the end of its line: add the closing quote"
    if "escape" in error.lower() or error.startswith(("Unescaped '\\'", "Invalid hex value")):
        return WINDOWS_PATH_HINT
    return None


def refuse_escaped_path(value: Any, where: str) -> None:
    """A path that holds a tab or a line break was a Windows path in double quotes (``"C:\\temp\\new"``).

    TOML reads ``\t`` and ``\n`` there as escapes, so the path the user meant is gone, and the error
    that follows ("C:<tab>emp does not exist") would not say why.
    """
    if not isinstance(value, str):
        return
    found = [shown for char, shown in _ESCAPED.items() if char in value]
    if found:
        raise ConfigError(f"{where}: the path contains {', '.join(found)}: {WINDOWS_PATH_HINT}")


def validate_settings(
    model: type[BaseModel],
    raw: dict[str, Any],
    *,
    key: str,
    file: Path | None,
    base_dir: Path,
    only: tuple[str, ...] | None = None,
) -> BaseModel:
    """Validate an agent's raw settings against its connector's settings model; ``only``: just these
    settings, the others neither read nor resolved (``_part_of``), for ``mvsync schema``."""
    if only is not None:
        model = _part_of(model, only)
        known = {f.alias or n for n, f in model.model_fields.items()} | set(model.model_fields)
        raw = {name: value for name, value in raw.items() if name in known}
    for name in secret_fields(model):
        if name in raw and not _is_ref(raw[name]) and raw[name] is not None:
            msg = (
                f"{_where(file, f'{key}.{name}')}: secrets may only be given as "
                f'{{ env = "VARIABLE" }} or {{ file = "/path/to/secret" }}, never inline'
            )
            raise ConfigError(msg)
    for name in _path_fields(model):
        refuse_escaped_path(raw.get(name), _where(file, f"{key}.{name}"))
    resolved = resolve_refs(raw, key=key, file=file, base_dir=base_dir)
    for name in _path_fields(model):
        value = resolved.get(name)
        if isinstance(value, str) and value:
            resolved[name] = str(beside_config(base_dir, value))
    try:
        return model.model_validate(resolved)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, file=file, prefix=key, model=model)) from None


def _part_of(model: type[BaseModel], names: tuple[str, ...]) -> type[BaseModel]:
    """``model`` with only the fields ``names``, each with its type, default and constraints, and the
    validators its type carries (``Annotated``); not the model's own validators, which may read the
    fields left out."""
    fields: dict[str, Any] = {n: (f.annotation, f) for n, f in model.model_fields.items() if n in names}
    return create_model(f"{model.__name__}Part", __config__=model.model_config, **fields)


def load_config(path: Path | str) -> MvsyncConfig:
    """Load and validate a configuration file. Agent settings stay raw until a connector is built."""
    file = Path(path).expanduser().resolve()
    try:
        text = read_text(file)
    except FileNotFoundError:
        msg = f"{file}: configuration file not found (create one with `mvsync init`, or pass -c PATH)"
        raise ConfigError(msg) from None
    except OSError as exc:
        msg = f"{file}: cannot read configuration: {exc.strerror}"
        raise ConfigError(msg) from None
    except TextDecodeError as exc:
        raise ConfigError(f"{file}: not readable as text: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        hint = _toml_hint(str(exc))
        raise ConfigError(f"{file}: not valid TOML: {exc}" + (f" ({hint})" if hint else "")) from None
    return config_from_dict(data, file=file)


def config_from_dict(data: dict[str, Any], *, file: Path | None = None, base_dir: Path | None = None) -> MvsyncConfig:
    """Validate a configuration given as a dict (tests, the demo and benchmarks build them in code)."""
    base = base_dir or (file.parent if file else Path.cwd())
    store = data.get("store")
    metaverse = data.get("metaverse")
    refuse_escaped_path(data.get("data_dir"), _where(file, "data_dir"))
    schema = metaverse.get("schema") if isinstance(metaverse, dict) else None
    refuse_escaped_path(schema, _where(file, "metaverse.schema"))
    if isinstance(store, dict) and "url" in store:
        refuse_escaped_path(store["url"], _where(file, "store.url"))
        store = dict(store)
        store["url"] = resolve_refs(store["url"], key="store.url", file=file, base_dir=base)
        data = {**data, "store": store}
    try:
        config = MvsyncConfig.model_validate({**data, "path": file, "base_dir": base})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, file=file, model=MvsyncConfig)) from None
    return config
