"""Configurations derived from ``samples/mvsync.toml``: the demo, the end-to-end test and benchmark.

They all run *the sample's* rules and run profiles (joins, precedence, flows, thresholds) and change
only what differs per site: where the tenant and the directory are and how to authenticate. That
way the sample is exercised end to end instead of a look-alike drifting away from it.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import tomlkit

from connector.agents.exchange_online import generate_key_file
from connector.config import ConfigError
from connector.emulator import exo_agent_settings
from connector.files import make_private_dir, write_private_file

__all__ = [
    "AD_SNAPSHOT_TYPE",
    "derive_config",
    "dump_toml",
    "emulator_down_hint",
    "emulator_exo_settings",
    "load_sample",
    "load_sample_document",
    "sample_path",
    "write_secret",
]

#: The ``type`` of the demo's AD stand-in (an installed entry point, see ``_directory``).
AD_SNAPSHOT_TYPE = "active-directory-snapshot"


def sample_path() -> Path:
    """``samples/mvsync.toml``: the copy shipped in the wheel, else the source tree's (editable installs)."""
    shipped = Path(__file__).resolve().parents[1] / "_data" / "samples" / "mvsync.toml"
    if shipped.is_file():
        return shipped
    return Path(__file__).resolve().parents[2] / "samples" / "mvsync.toml"


def load_sample(path: Path | None = None) -> dict[str, Any]:
    """The sample configuration as plain values (references such as ``{env = ..}`` left unresolved)."""
    return load_sample_document(path).unwrap()


def load_sample_document(path: Path | None = None) -> tomlkit.TOMLDocument:
    """The sample configuration as a TOML document: a dict that keeps the sample's comments, so the
    configuration derived from it (``derive_config``, ``dump_toml``) still explains itself."""
    path = path or sample_path()
    try:
        return tomlkit.parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        msg = f"{path}: the sample configuration is missing (the demo needs the source tree's samples/ folder)"
        raise ConfigError(msg) from None


def write_secret(path: Path, value: str) -> Path:
    """Write a secret file for the owner only (0600 in a 0700 folder; an owner-only ACL on Windows)."""
    make_private_dir(path.parent)
    write_private_file(path, (value + "\n").encode("utf-8"))
    return path


#: The file that marks a folder as made by ``mvsync demo`` (the next demo run may empty it).
MARKER = ".mvsync-demo"
#: What doctor and ``run`` say when a demo folder's agent cannot reach the emulator.
EMULATOR_DOWN = "the demo's emulator is not running; run `mvsync demo` again"


def uses_stopped_emulator(base_dir: Path, settings: Mapping[str, Any]) -> bool:
    """Whether an agent of a demo folder talks to the demo's loopback emulator (gone with the demo).

    Why: after ``mvsync demo`` the folder's configuration points at an emulator that stopped with
    it; that is expected, and doctor says so instead of failing the demo's own folder.
    """
    if not (base_dir / MARKER).is_file():
        return False
    url = str(settings.get("graph_url") or settings.get("ews_url") or "")
    return url.startswith(("https://127.0.0.1:", "https://localhost:", "https://[::1]:"))


def emulator_down_hint(base_dir: Path, settings: Mapping[str, Any], status: str) -> str | None:
    """:data:`EMULATOR_DOWN` when an agent could not reach its server (``stopped-server-down``) because
    it is the demo's stopped emulator, else None: what ``mvsync run`` and ``mvsync auth status`` add to
    their message, so that the demo's user is told what to do rather than shown a refused connection."""
    if status == "stopped-server-down" and uses_stopped_emulator(base_dir, settings):
        return EMULATOR_DOWN
    return None


def keep_ca(ca_bundle: str, secrets: Path, name: str) -> str:
    """A copy of an emulator's CA beside the secrets; its path, for the written configuration.

    The emulator's CA lives in a temporary folder that goes with it; the copy keeps the written
    configuration valid (doctor, a dry run) after the demo ends.
    """
    ca = secrets / name
    shutil.copyfile(ca_bundle, ca)
    ca.chmod(0o600)  # the folder's files are private to the operator, like the secrets beside it
    return str(ca)


def emulator_exo_settings(
    sample: Mapping[str, Any], info: Mapping[str, Any], secrets: Path, **overrides: Any
) -> dict[str, Any]:
    """The sample's exo settings pointed at a running emulator.

    The emulator's refresh token seeds the token cache (as the classic MA's ``refresh.token``
    file did), through a ``{ file = .. }`` reference; the cache is encrypted with a key file.
    Both files are created for the owner only under ``secrets``.
    """
    settings = dict(sample["agents"]["exo"]["settings"])
    rt = write_secret(secrets / "exo-refresh-token", str(info["refresh_token"]))
    key = secrets / "token-cache.key"
    if not key.exists():
        generate_key_file(key)  # as `mvsync auth login` does: owner only, DPAPI-sealed on Windows
    settings.update(exo_agent_settings(info, refresh_token={"file": str(rt)}, token_cache_key_file=str(key)))
    if settings.get("ca_bundle"):
        settings["ca_bundle"] = keep_ca(settings["ca_bundle"], secrets, "emulator-ca.pem")
    settings.update(overrides)
    return settings


def derive_config(
    sample: MutableMapping[str, Any],
    *,
    store_url: str,
    data_dir: str,
    exo: dict[str, Any],
    hr: dict[str, Any],
    ad_type: str,
    ad: dict[str, Any],
    exs: dict[str, Any] | None = None,
) -> MutableMapping[str, Any]:
    """A copy of the sample with its site settings replaced (rules and run profiles untouched).

    A ``load_sample_document`` sample keeps its comments: settings are changed key by key, so the
    explanation beside each setting the site keeps stays with it. The AD snapshot stand-in has
    settings of its own, so the directory's settings (and their comments) give way to them.
    Without ``exs`` settings the site has no on-premises Exchange: the ``exs`` agent, its run-profile
    steps and its place in the precedence go, as the sample's header tells a site to do.
    """
    data = copy.deepcopy(sample)
    _update_table(data["store"], {"url": store_url})
    data["data_dir"] = data_dir
    agents = data["agents"]
    _update_table(agents["exo"]["settings"], exo, exactly=True)
    _update_table(agents["hr"]["settings"], hr)
    agents["ad"]["type"] = ad_type
    if ad_type == AD_SNAPSHOT_TYPE:
        agents["ad"]["settings"] = ad
    else:
        _update_table(agents["ad"]["settings"], ad)
    if exs is not None:
        _update_table(agents["exs"]["settings"], exs)
    else:
        _drop_agent(data, "exs")
    return data


def _drop_agent(data: MutableMapping[str, Any], name: str) -> None:
    """Remove agent ``name``, its run-profile steps and its precedence ranks, in place (lists keep
    their layout in a document)."""
    data["agents"].pop(name, None)
    for profile in data.get("run_profiles", {}).values():
        _remove_where(profile["steps"], lambda step: step.get("agent") == name)
    for ranked in data.get("metaverse", {}).get("precedence", {}).values():
        _remove_where(ranked, lambda agent: agent == name)


def _remove_where(items: list[Any], unwanted: Callable[[Any], bool]) -> None:
    for index in reversed(range(len(items))):
        if unwanted(items[index]):
            del items[index]


# ------------------------------------------------------------------------------------- TOML out
def dump_toml(data: Mapping[str, Any], header: str = "") -> str:
    """TOML for a configuration: a document from ``load_sample_document`` keeps the sample's comments
    and layout; a plain dict is laid out by tomlkit. ``None`` values are left out (TOML has none)."""
    document = data if isinstance(data, tomlkit.TOMLDocument) else _without_none(data)
    return header + tomlkit.dumps(document)


def _without_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_none(v) for v in value]
    return value


def _toml_value(value: Any) -> Any:
    """``value`` as the sample writes settings: a mapping (``{ file = .. }``) inline, not a new table."""
    if isinstance(value, Mapping):
        table = tomlkit.inline_table()
        table.update({k: _toml_value(v) for k, v in value.items() if v is not None})
        return table
    if isinstance(value, list | tuple):
        return [_toml_value(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def _update_table(table: MutableMapping[str, Any], values: Mapping[str, Any], *, exactly: bool = False) -> None:
    """Set ``values`` in ``table`` key by key, so the comments and order of the keys kept stay as they
    are; with ``exactly``, keys ``values`` does not name go."""
    if exactly:
        for key in [k for k in table if k not in values]:
            del table[key]
    for key, value in values.items():
        if table.get(key) != value:
            table[key] = _toml_value(value)
