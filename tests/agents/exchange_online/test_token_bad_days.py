"""The sign-in endpoint on a bad day, mid-run: an outage, push-back or a proxy's page where a token
answer belongs. Through the real CLI (``mvsync run``, in this process) against the emulator over HTTPS:
the step stops naming the authority and what to do, with a documented status and exit code, and what
was written before is recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from connector.emulator._http import Response
from tests.agents.exchange_online.conftest import at_photo_upload, folder_to_exchange_online
from tests.cli._configs import invoke

_JSON = [("Content-Type", "application/json")]
_HTML = [("Content-Type", "text/html")]


def _busy(status: int, headers: list[tuple[str, str]]) -> Response:
    """Entra ID's answer for a busy service: OAuth's ``temporarily_unavailable`` ("Retry the request")."""
    body = {
        "error": "temporarily_unavailable",
        "error_description": "AADSTS90055: TenantThrottlingError. Trace ID: 1\r\nCorrelation ID: 2",
        "error_codes": [90055],
    }
    return Response(status, json.dumps(body).encode(), [*_JSON, *headers])


def _token_endpoint_answers(emu: Any, answer: Response, endpoint: str = "token") -> None:
    """From now on the emulator's token endpoint (or its ``devicecode`` endpoint) answers ``answer``
    (discovery still works), and the access tokens it issued expire: the agent's next request needs a new one."""
    identity = emu.identity
    real = identity.handle

    def handle(req: Any) -> Any:
        return answer if req.path.endswith(f"/oauth2/v2.0/{endpoint}") else real(req)

    identity.handle = handle
    emu.admin.expire_access_tokens()


@pytest.mark.usefixtures("cache_key")
@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (Response(503, b'{"error":"server_error"}', _JSON), "answered HTTP 503"),
        (Response(502, b"<html><body>Bad gateway</body></html>", _HTML), "answered HTTP 502"),
        (Response(403, b"<html><body>Blocked by policy</body></html>", _HTML), "answered HTTP 403 (text/html)"),
        (_busy(429, [("Retry-After", "1")]), "AADSTS90055"),
        (_busy(400, []), "AADSTS90055"),
    ],
    ids=["503", "502-html", "proxy-page", "429-busy", "400-busy"],
)
def test_a_sign_in_endpoint_that_fails_mid_export_stops_the_step_naming_it_not_a_traceback(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: Response, said: str
) -> None:
    """Found by the token pass: the token endpoint answering 5xx mid-run escaped MSAL as
    MsalServiceError ("HTTP Error: 503"), and a proxy's HTML page as a JSONDecodeError: exit 1 with a
    traceback, the photos already written left pending. Entra ID's temporarily_unavailable (busy,
    "retry the request") told the admin to sign in again, which changes nothing. Each now stops the
    step as stopped-server-down (exit 4) naming the authority and how it answered; the sign-in is
    kept and the photos not written stay pending for the next run."""
    emu = make_emulator(users=40)
    config, people = folder_to_exchange_online(emu, tmp_path, 4, concurrency=1)
    code, out, err = invoke("run", "stage", "-c", str(config))
    assert code == 0, out + err

    at_photo_upload(monkeypatch, 3, lambda: _token_endpoint_answers(emu, answer))
    code, out, err = invoke("run", "export", "-c", str(config), "--json")

    assert "Traceback" not in out + err
    [step] = json.loads(out)["steps"]
    assert (code, step["status"]) == (4, "stopped-server-down"), out + err
    message = step["message"]
    assert f"the authority {emu.info['authority']}" in message and said in message, message
    assert "auth login" not in message  # signing in again changes nothing
    assert "run the step again later" in message
    written = [person for person in people if emu.admin.get_photo(person) is not None]
    assert len(written) == 2  # the two photos before the token ran out are recorded, not pending
    code, out, err = invoke("pending-exports", "exo", "-c", str(config), "--json")
    assert {row["anchor"] for row in json.loads(out)} == set(people) - set(written)


@pytest.mark.usefixtures("cache_key")
@pytest.mark.parametrize("endpoint", ["token", "devicecode"])
def test_a_sign_in_endpoint_that_fails_during_auth_login_keeps_the_sign_in_and_says_so(
    make_emulator: Any, tmp_path: Path, endpoint: str
) -> None:
    """`mvsync auth login --refresh-token-file` while the token endpoint answers 503 ended in MSAL's
    MsalServiceError ("HTTP Error: 503"), and the device-code sign-in while the device-code endpoint
    answers a 503 page in a JSONDecodeError: exit 1 with a traceback. Each now names the authority and
    its answer, exit 4, and the token cache keeps the sign-in it held."""
    emu = make_emulator(users=5)
    config, _ = folder_to_exchange_online(emu, tmp_path, 1)
    code, out, err = invoke("auth", "status", "exo", "-c", str(config), "--json")
    assert code == 0, out + err  # the configured refresh token seeded the cache
    cache = tmp_path / "data" / "exo" / "token-cache.bin"
    before = cache.read_bytes()
    (tmp_path / "rt.txt").write_text(emu.admin.issue_refresh_token())
    _token_endpoint_answers(emu, Response(503, b"<html>Service Unavailable</html>", _HTML), endpoint)

    imported = ("--refresh-token-file", str(tmp_path / "rt.txt")) if endpoint == "token" else ()
    code, out, err = invoke("auth", "login", "exo", "-c", str(config), *imported, "--timeout", "30")

    assert code == 4 and "Traceback" not in out + err, out + err
    assert f"the authority {emu.info['authority']} answered HTTP 503 (text/html)" in err, err
    assert "sign in again later" in err
    assert cache.read_bytes() == before


@pytest.mark.usefixtures("cache_key")
@pytest.mark.parametrize("content", [b"not a token cache", b""], ids=["damaged", "empty"])
def test_a_token_cache_that_cannot_be_decrypted_is_replaced_by_the_sign_in_its_message_names(
    make_emulator: Any, tmp_path: Path, content: bytes
) -> None:
    """Found by the token pass: a token cache damaged (or left empty by a disk that filled, or written
    under another key) stopped every command with "cannot be decrypted ...; re-authorize to create a
    new one", and `mvsync auth login` itself, the way to re-authorize, stopped with the same error
    (it read the cache before signing in), so the agent stayed stuck until someone deleted the file,
    which nothing said. The message now names the command, and that command replaces the cache."""
    emu = make_emulator(users=10)
    config, _ = folder_to_exchange_online(emu, tmp_path, 1)
    assert invoke("auth", "status", "exo", "-c", str(config))[0] == 0
    cache = tmp_path / "data" / "exo" / "token-cache.bin"
    cache.write_bytes(content)

    code, out, err = invoke("run", "stage", "-c", str(config))
    assert code == 2 and "Traceback" not in out + err, out + err
    assert f"the token cache {cache} cannot be decrypted with the configured key" in err
    assert f"sign in again, which replaces it: mvsync auth login exo -c {config}" in err, err

    (tmp_path / "rt.txt").write_text(emu.admin.issue_refresh_token())
    code, out, err = invoke("auth", "login", "exo", "-c", str(config), "--refresh-token-file", str(tmp_path / "rt.txt"))
    assert code == 0, out + err
    assert f"the token cache {cache} cannot be decrypted" in err and "the new sign-in replaces it" in err
    code, out, err = invoke("run", "stage", "-c", str(config))
    assert code == 0, out + err


#: The keys of the failure object (README: JSON on failure).
_FAILURE_KEYS = {"status", "exit_code", "message", "run_id"}


@pytest.mark.usefixtures("cache_key")
@pytest.mark.parametrize("demo_folder", [False, True], ids=["site", "demo-folder"])
def test_auth_status_without_a_token_is_a_failure_object_with_its_report(
    make_emulator: Any, tmp_path: Path, demo_folder: bool
) -> None:
    """Found by QA: `mvsync auth status --json` without a token printed its report only (no ``status``,
    ``exit_code``, ``message``: README's JSON on failure), exit 4 documented nowhere, and in a folder
    `mvsync demo` made, only "cannot reach the authority", where `run` and doctor say what to do. Now
    the report carries the failure object's keys, and the demo's hint is the one `run` gives."""
    emu = make_emulator(users=5)
    ca_bundle = tmp_path / "ca.pem"  # the emulator removes its own when it stops
    ca_bundle.write_bytes(Path(emu.info["ca_cert"]).read_bytes())
    config, _ = folder_to_exchange_online(emu, tmp_path, 1, ca_bundle=str(ca_bundle))
    if demo_folder:
        from connector.demo._config import MARKER

        (tmp_path / MARKER).write_text("made by `mvsync demo`")
    assert invoke("auth", "status", "exo", "-c", str(config))[0] == 0  # the cache holds the sign-in
    emu.stop()

    code, out, err = invoke("auth", "status", "exo", "-c", str(config), "--json")
    [line] = out.splitlines()
    doc = json.loads(line)
    assert code == 4 and _FAILURE_KEYS | {"agent", "ok", "detail", "token_cache"} <= set(doc), out + err
    assert (doc["status"], doc["exit_code"], doc["run_id"], doc["ok"]) == ("stopped-server-down", 4, None, False)
    assert doc["detail"].startswith("cannot reach the authority") and doc["detail"] in doc["message"]
    hint = "the demo's emulator is not running; run `mvsync demo` again"
    assert doc["message"].startswith(hint) is demo_folder, doc["message"]
    assert f"error: {doc['message']}" in err

    code, out, err = invoke("run", "stage", "-c", str(config))  # the same hint as `run`'s, from one place
    assert code == 4 and (f"hint: {hint}" in err) is demo_folder, out + err


def test_step_time_configuration_errors_name_the_agents_setting_in_use(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: messages found during a step named the wrong setting, or a bare one. A key file that does not
    exist before the first sign-in said "is not readable"; a cache the key file's key cannot decrypt
    said "token_cache_key_env:" (the variable is not set: the key file is in use); an authority of
    another tenant said "authority:", not where it is set, as the checks before a run do."""
    monkeypatch.delenv("MVSYNC_TOKEN_CACHE_KEY", raising=False)
    emu = make_emulator(users=10)
    key_file = tmp_path / "cache.key"
    config, _ = folder_to_exchange_online(emu, tmp_path, 1, token_cache_key_file=str(key_file))

    code, out, err = invoke("run", "stage", "-c", str(config))
    said = " ".join(err.split())
    assert code == 2 and "Traceback" not in out + err, out + err
    assert (
        f"agents.exo.settings.token_cache_key_file: {key_file} does not exist: run `mvsync auth login exo`, "
        "which creates it"
    ) in said, said

    assert invoke("auth", "status", "exo", "-c", str(config))[0] == 2  # (it says the same)
    assert (
        invoke(
            "auth",
            "login",
            "exo",
            "-c",
            str(config),
            "--refresh-token-file",
            str(tmp_path / "secrets" / "refresh-token"),
        )[0]
        == 0
    )
    key_file.chmod(0o600)
    key_file.write_text(Fernet.generate_key().decode() + "\n", encoding="utf-8")  # another key
    code, out, err = invoke("run", "stage", "-c", str(config))
    cache = tmp_path / "data" / "exo" / "token-cache.bin"
    assert code == 2 and "Traceback" not in out + err, out + err
    assert f"agents.exo.settings.token_cache_key_file: the token cache {cache} cannot be decrypted" in err, err


@pytest.mark.usefixtures("cache_key")
def test_an_authority_of_another_tenant_names_the_agents_authority_setting(make_emulator: Any, tmp_path: Path) -> None:
    emu = make_emulator(users=10)
    unknown = "00000000-0000-0000-0000-00000000dead"  # a tenant the authority does not know (AADSTS90002)
    authority = emu.info["authority"].rsplit("/", 1)[0] + f"/{unknown}"
    # tenant_id agrees with it: another tenant id there is refused before the authority is asked (test_settings_checks)
    config, _ = folder_to_exchange_online(emu, tmp_path, 1, authority=authority, tenant_id=unknown)
    code, out, err = invoke("run", "stage", "-c", str(config))
    assert code == 2 and "Traceback" not in out + err, out + err
    assert f"agents.exo.settings.authority: cannot use authority {authority}: " in " ".join(err.split()), err
