"""``mvsync auth login AGENT`` / ``mvsync auth status AGENT``: the one-time admin consent.

Like the classic Exchange Online MA, an agent runs unattended on a delegated refresh token: an
admin signs in once (the device-code flow, which works on a headless sync server), or imports a
refresh token obtained elsewhere (``--refresh-token-file``, e.g. the old MA's refresh.token). The
token lands in the agent's encrypted token cache; it is never printed. The exact command is what
``stopped-authentication`` messages tell the operator to run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from connector.cli._common import (
    DEFAULT_CONFIG,
    EXIT_CONFIG,
    EXIT_STOPPED,
    ConfigOption,
    JsonOption,
    console,
    err_console,
    fail,
    handle_errors,
    print_json,
)

if TYPE_CHECKING:
    from connector.config import MvsyncConfig

auth_app = typer.Typer(help="Sign agents in (delegated refresh tokens) and check their tokens.", no_args_is_help=True)


def _agent_auth(config: Path, agent: str, *, signing_in: bool) -> tuple[MvsyncConfig, Any]:
    """The configuration and the agent's ``GraphAuth`` (only agents that sign in have one);
    ``signing_in`` (`auth login`) creates the key file if need be, and lets the sign-in replace a
    cache that cannot be decrypted."""
    from connector.agents.exchange_online import ExchangeOnlinePhotosConnector, generate_key_file
    from connector.config import ConfigError, load_config
    from connector.engine import open_connector, setting_paths, trust_problem

    cfg = load_config(config)
    connector = open_connector(cfg, agent)
    if not isinstance(connector, ExchangeOnlinePhotosConnector):
        raise fail(f"agent {agent!r} (type {cfg.agents[agent].type}) does not sign in to anything", EXIT_CONFIG)
    settings = connector.settings
    key_file = settings.token_cache_key_file
    key_file_used = "token_cache_key_file" not in settings.unused_settings()
    if signing_in and key_file is not None and not key_file.exists() and key_file_used:
        generate_key_file(key_file)
        err_console.print(f"created the token cache key file {key_file} (owner only): back it up")
    # the checks a run makes before its first step: a CA file missing is the setting's fault (exit 2),
    # not the authority's outage (exit 4), and is said before anything is sent
    problems = [
        f"agents.{agent}.settings.{field}: {why}" for field, _, why in setting_paths(connector.settings, agent) if why
    ]
    problems += filter(None, [trust_problem(connector.settings)])
    if problems:
        raise ConfigError("\n".join(problems))
    connector.context.make_data_dir()
    return cfg, connector.sign_in_auth() if signing_in else connector.auth


@auth_app.command("login")
@handle_errors
def login(
    agent: Annotated[str, typer.Argument(help="The agent to sign in (its \\[agents.NAME] section).")],
    config: ConfigOption = DEFAULT_CONFIG,
    refresh_token_file: Annotated[
        Path | None,
        typer.Option(
            "--refresh-token-file",
            help="Import this refresh token instead of signing in.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Give up the device-code sign-in after seconds.")] = 900,
) -> None:
    """Sign AGENT in: the device-code flow, or import an existing refresh token."""
    from connector.sdk import ConfigurationError, ConnectorError

    _, auth = _agent_auth(config, agent, signing_in=True)
    try:
        if refresh_token_file is not None:
            who = auth.login_with_refresh_token(_read_refresh_token(refresh_token_file))
        else:
            who = auth.login_device_code(lambda message: err_console.print(message), timeout_s=timeout)
    except ConfigurationError:
        raise  # a setting to fix: exit 2 (handle_errors), not a stopped sign-in
    except ConnectorError as exc:
        raise fail(str(exc), EXIT_STOPPED) from None
    console.print(f"{agent}: signed in as {who}; token cache {auth.cache_path} (encrypted, owner only)")


@auth_app.command("status")
@handle_errors
def status(
    agent: Annotated[str, typer.Argument(help="The agent to check.")],
    config: ConfigOption = DEFAULT_CONFIG,
    json_out: JsonOption = False,
) -> None:
    """Whether AGENT's token cache exists and yields an access token (refreshing it if needed).

    Exit code: 0 ok, 4 no token (the authority refused the sign-in or cannot be reached), 2 a setting.
    """
    from connector.demo import emulator_down_hint

    cfg, auth = _agent_auth(config, agent, signing_in=False)
    result = auth.status()
    data = {
        "agent": agent,
        "mode": result.mode,
        # app mode caches nothing on disk: each process gets a new token (the credential is tested every run)
        "token_cache": str(result.cache_file) if result.cache_file is not None else None,
        "token_cache_exists": result.cache_exists,
        "accounts": list(result.accounts),
        "ok": result.token_ok,
        "detail": result.detail,
    }
    if json_out:
        if result.token_ok:
            print_json(data)
    else:
        for key, value in data.items():
            console.print(f"{key}: {value}", highlight=False)
    if not result.token_ok:
        # a failure like any other (README: JSON on failure): the error line, and with --json the
        # failure object's keys beside the report's, the demo's hint as `run` and doctor give it
        hint = emulator_down_hint(cfg.base_dir, cfg.agents[agent].settings, result.status)
        message = f"{hint} ({result.detail})" if hint else result.detail
        raise fail(escape(message), EXIT_STOPPED, status=result.status, extra=data)


def register(app: typer.Typer) -> None:
    """Add ``mvsync auth``."""
    app.add_typer(auth_app, name="auth")


def _read_refresh_token(path: Path) -> str:
    """The refresh token to import, in any encoding a Windows admin saves it in (``connector.secrets``)."""
    from connector.secrets import SecretFileError, read_secret_file

    try:
        return read_secret_file(path, key="--refresh-token-file")
    except SecretFileError as exc:
        raise fail(str(exc), EXIT_CONFIG) from None
