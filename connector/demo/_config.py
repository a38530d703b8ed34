"""Configurations derived from ``samples/mvsync.toml``: the demo, the end-to-end test and benchmark.

They all run *the sample's* rules and run profiles (joins, precedence, flows, thresholds) and change
only what differs per site: where the tenant and the directory are and how to authenticate. That
way the sample is exercised end to end instead of a look-alike drifting away from it.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from connector.agents.exchange_online import generate_key_file
from connector.config import ConfigError
from connector.emulator import exo_agent_settings
from connector.files import make_private_dir, write_private_file

__all__ = [
    "AD_SNAPSHOT_TYPE",
    "derive_config",
    "dump_toml",
    "emulator_exo_settings",
    "load_sample",
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
    """The sample configuration as a dict (references such as ``{env = ..}`` left unresolved)."""
    path = path or sample_path()
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
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
    settings.pop("token_cache_key_env", None)
    if settings.get("ca_bundle"):
        settings["ca_bundle"] = keep_ca(settings["ca_bundle"], secrets, "emulator-ca.pem")
    settings.update(overrides)
    return settings


def derive_config(
    sample: Mapping[str, Any],
    *,
    store_url: str,
    data_dir: str,
    exo: dict[str, Any],
    hr: dict[str, Any],
    ad_type: str,
    ad: dict[str, Any],
    exs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A copy of the sample with its site settings replaced (rules and run profiles untouched).

    Without ``exs`` settings the site has no on-premises Exchange: the ``exs`` agent, its run-profile
    steps and its place in the precedence go, as the sample's header tells a site to do.
    """
    data = copy.deepcopy(dict(sample))
    data["store"] = {**data.get("store", {}), "url": store_url}
    data["data_dir"] = data_dir
    agents = data["agents"]
    agents["exo"]["settings"] = exo
    agents["hr"]["settings"] = {**agents["hr"]["settings"], **hr}
    agents["ad"]["type"] = ad_type
    agents["ad"]["settings"] = ad if ad_type == AD_SNAPSHOT_TYPE else {**agents["ad"]["settings"], **ad}
    if exs is not None:
        agents["exs"]["settings"] = {**agents["exs"]["settings"], **exs}
    else:
        _drop_agent(data, "exs")
    return data


def _drop_agent(data: dict[str, Any], name: str) -> None:
    data["agents"].pop(name, None)
    for profile in data.get("run_profiles", {}).values():
        profile["steps"] = [step for step in profile["steps"] if step.get("agent") != name]
    precedence = data.get("metaverse", {}).get("precedence", {})
    for attribute, ranked in precedence.items():
        precedence[attribute] = [agent for agent in ranked if agent != name]


# ------------------------------------------------------------------------------------- TOML out
_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(name: str) -> str:
    return name if _BARE.match(name) else json.dumps(name)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # JSON escapes are valid TOML basic-string escapes
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    msg = f"cannot write {type(value).__name__} as TOML"
    raise TypeError(msg)


def dump_toml(data: Mapping[str, Any], header: str = "") -> str:
    """TOML for a configuration dict: tables as ``[a.b]``, lists of tables as ``[[a.b]]``.

    (The standard library reads TOML but does not write it; configurations need only this much.)
    """
    out: list[str] = [header] if header else []

    def table(path: list[str], body: Mapping[str, Any], *, array: bool = False) -> None:
        # Near the top everything structured is a section; deeper, short values stay inline.
        def inline(value: Any) -> bool:
            if not (_is_table(value) or _is_table_list(value)):
                return True
            return len(path) >= 2 and len(_value(value)) <= 100

        if path:
            name = ".".join(_key(p) for p in path)
            out.append(f"\n[[{name}]]" if array else f"\n[{name}]")
        out.extend(f"{_key(k)} = {_value(v)}" for k, v in body.items() if v is not None and inline(v))
        for k, v in body.items():
            if v is None or inline(v):
                continue
            if _is_table(v):
                table([*path, k], v)
            else:
                for item in v:
                    table([*path, k], item, array=True)

    table([], data)
    return "\n".join(out) + "\n"


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping) and not _is_ref(value)


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _is_ref(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in ("env", "file")
