"""Prometheus metrics (engine steps, agent helpers, textfile and HTTP exporter) and JSON logs with
secrets redacted."""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import re
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from connector import metrics
from connector.logging import RedactingFilter, mask_url, redact, setup_logging
from tests.engine.conftest import World, add_users


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_engine_steps_are_counted_and_timed(tmp_path: Path) -> None:
    world = World(tmp_path)
    try:
        add_users(world, 4)
        before = value("mvsync_steps_total", agent="exo", kind="full-import", status="success")
        adds = value("mvsync_step_objects_total", agent="exo", kind="full-import", counter="adds")
        timed = value("mvsync_step_duration_seconds_count", agent="exo", kind="full-import")
        world.cycle()
        assert value("mvsync_steps_total", agent="exo", kind="full-import", status="success") == before + 1
        assert value("mvsync_step_objects_total", agent="exo", kind="full-import", counter="adds") == adds + 4
        assert value("mvsync_step_duration_seconds_count", agent="exo", kind="full-import") == timed + 1
        assert value("mvsync_step_last_end_timestamp_seconds", agent="ad", kind="full-sync", status="success") > 0
    finally:
        world.close()


def test_agent_helpers() -> None:
    before = (
        value("mvsync_graph_requests_total", status="429"),
        value("mvsync_graph_throttles_total"),
        value("mvsync_graph_retries_total"),
        value("mvsync_ldap_writes_total", result="success"),
        value("mvsync_photos_total", outcome="too-large"),
    )
    metrics.graph_request(429)
    metrics.graph_throttle()
    metrics.graph_retry()
    metrics.ldap_write()
    metrics.photo("too-large")
    after = (
        value("mvsync_graph_requests_total", status="429"),
        value("mvsync_graph_throttles_total"),
        value("mvsync_graph_retries_total"),
        value("mvsync_ldap_writes_total", result="success"),
        value("mvsync_photos_total", outcome="too-large"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 1, 1]


def test_textfile_is_written_atomically_for_the_collector(tmp_path: Path) -> None:
    target = tmp_path / "mvsync.prom"
    metrics.configure(textfile=target)
    metrics.photo("exported")
    assert metrics.write_textfile() == target
    text = target.read_text()
    assert "# TYPE mvsync_photos_total counter" in text or "# TYPE mvsync_photos counter" in text
    assert 'mvsync_photos_total{outcome="exported"}' in text
    assert "python_gc" not in text  # our registry only
    # no temp file left behind; the lock beside it is no *.prom file, so the collector never reads it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mvsync.prom", "mvsync.prom.lock"]
    with pytest.raises(ValueError, match="does not exist"):
        metrics.configure(textfile=tmp_path / "missing" / "x.prom")
    with pytest.raises(ValueError, match=r"is a folder; name a file in it, e\.g\. .*mvsync\.prom"):
        metrics.configure(textfile=tmp_path)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_textfile_that_cannot_be_written_at_the_end_is_said_and_the_runs_exit_code_stands(
    tmp_path: Path, log_format: str
) -> None:
    """Something takes the file's place during the run (here a folder): one line, not a traceback that
    would hide the run's own outcome; the run is in history and its exit code is the scheduler's. With
    --log-format json the line is a JSON record (found in the ops pass: it was the one plain-text
    line on a stderr a log shipper reads as JSON lines)."""
    from typer.testing import CliRunner

    from connector.cli import app
    from tests.cli._configs import with_directory
    from tests.engine.memory import DIRECTORIES, directory

    name = f"metrics-{tmp_path.name}"
    mem = directory(name)
    mem["objects"]["u1"] = {"accountName": "u1"}
    prom = tmp_path / "mvsync.prom"
    mem["during_import"] = lambda _page: prom.mkdir()
    config = with_directory(
        tmp_path,
        mem,
        f"""
[store]
url = "sqlite:///{(tmp_path / "store.db").as_posix()}"
[agents.m]
type = "tests.engine.memory:MemoryConnector"
settings = {{ directory = "DIRECTORY" }}
[run_profiles.import]
steps = [{{ type = "full-import", agent = "m" }}]
""",
    )
    try:
        args = ["--log-format", log_format, "--metrics-textfile", str(prom), "run", "import", "-c", str(config)]
        result = CliRunner().invoke(app, args)
    finally:
        DIRECTORIES.pop(name, None)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.stderr
    said = "--metrics-textfile: cannot write "
    if log_format == "text":
        assert f"error: {said}" in result.stderr
    else:
        records = [json.loads(line) for line in result.stderr.splitlines()]  # every stderr line is JSON
        assert records[-1]["level"] == "error" and records[-1]["message"].startswith(said)


def test_http_exporter_serves_metrics_on_loopback() -> None:
    port = metrics.configure(port=0)  # 0: a port the system picks, returned
    assert port and metrics.configure(port=0) == port  # idempotent: no second server
    metrics.graph_request(200)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        body = resp.read().decode()
    assert 'mvsync_graph_requests_total{status="200"}' in body


def _ask(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """One request to the exporter: status, headers (lower-case names) and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_http_exporter_answers_like_a_prometheus_exporter() -> None:
    """Found by asking the endpoint with http.client: every path served the metrics (``/nope`` was 200
    with the whole exposition), HEAD /metrics was 405, and every answer carried ``Server: WSGIServer/0.2
    CPython/3.11.7``, the exact Python version to anyone who can reach the port. The text format's
    Content-Type was right and stays so (Prometheus exposition formats: version 0.0.4)."""
    port = metrics.configure(port=0)
    assert port
    metrics.photo("exported")
    status, headers, body = _ask(port, "GET", "/metrics")
    assert (status, headers["content-type"]) == (200, "text/plain; version=0.0.4; charset=utf-8")
    assert b'mvsync_photos_total{outcome="exported"}' in body
    assert int(headers["content-length"]) == len(body)

    status, head_headers, head_body = _ask(port, "HEAD", "/metrics")
    assert (status, head_body, head_headers["content-type"]) == (200, b"", headers["content-type"])
    assert head_headers["content-length"] == headers["content-length"]  # what the GET would send

    for path in ("/", "/nope", "/metrics/x", "/favicon.ico"):
        status, other, text = _ask(port, "GET", path)
        assert (status, text) == (404, b"not found: the metrics are at /metrics\n"), path
        assert other["content-type"] == "text/plain; charset=utf-8"
    assert _ask(port, "POST", "/metrics")[0] == 405
    for answer in (headers, head_headers, other):
        assert "python" not in answer.get("server", "").lower(), answer


SECRETS = [
    ("Authorization: Bearer eyJ0eXAiOiJKV1QiLCJhbGciOi.eyJhdWQiOiJodHRwczovL2dyYXBo.c2lnbmF0dXJl", "eyJ0eXAi"),
    ("refresh_token=0.AXoAabcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123&x=1", "0.AXoA"),
    ('{"client_secret": "s3cr3t-Value~1", "user": "bob"}', "s3cr3t"),
    ("bind failed for cn=admin password='hunter2!' on ldaps://dc1", "hunter2"),
    ("postgresql+psycopg://mvsync:p4ssw0rd@127.0.0.1:5432/db", "p4ssw0rd"),
    ("token: abc.def.ghi", "abc.def"),
    # the emulator's refresh tokens, and Entra's that start with 1.A (QA: left in clear in free text)
    ("redeemed 1.AXkA" + "a" * 60 + " for exo", "1.AXkA"),
    # MSAL's token_cache DEBUG event of a device-code sign-in: the device code, also as "code" (QA)
    ('"device_code": "DAQABAAEAAAD2S9JJxyzxyzxyz0123456789abcdef",', "DAQABAAEAAAD"),
    ('"code": "DAQABAAEAAAD2S9JJxyzxyzxyz0123456789abcdef",', "DAQABAAEAAAD"),
    ("device_code=DAQABAAEAAAD2S9JJ&client_id=x", "DAQABAAEAAAD"),
    # QA: "Authorization: Basic <b64>" lost the scheme's name to the key rule and kept the credentials
    ("Authorization: Basic ab+CdXNlcjpwYXNzd29yZA==", "dXNlcjpw"),
    # requests-gssapi's and pyspnego's DEBUG records: a Kerberos ticket, NTLM messages (crackable offline)
    ("authenticate_user(): Authorization header: Negotiate YIIGhgYJKoZIhvcSAQICAQBuggZ1MIIG", "YIIGhgYJ"),
    ("NTLM step output: TlRMTVNTUAADAAAAGAAYAFgAAACmAKYAcAAAAA4ADgAWAQAA", "TlRMTVNTUAAD"),
    ("WWW-Authenticate: NTLM TlRMTVNTUAACAAAABAAEADgAAAA1goriVo8QzBIafpMA", "TlRMTVNTUAAC"),
]


@pytest.mark.parametrize(("text", "secret"), SECRETS)
def test_redact(text: str, secret: str) -> None:
    assert secret not in redact(text)
    assert "***" in redact(text)


MASKED_URLS = [
    ("postgresql+psycopg://mvsync:pw@db:5432/mvsync", "postgresql+psycopg://mvsync:***@db:5432/mvsync"),
    # a raw @ in the password: everything up to the last @ of the network location is the user info
    ("postgresql+psycopg://mvsync:P@ssWORD99@127.0.0.1/db", "postgresql+psycopg://mvsync:***@127.0.0.1/db"),
    (
        "postgresql+psycopg://mvsync@db/m?sslmode=require&password=PgS3cret",
        "postgresql+psycopg://mvsync@db/m?sslmode=require&password=***",
    ),
    (
        "postgresql+psycopg://mvsync@db/m?PASSWORD=PgS3cret&application_name=x",
        "postgresql+psycopg://mvsync@db/m?PASSWORD=***&application_name=x",
    ),
    # no password: an @ in the path is not user info, a file path is left alone
    (
        "https://127.0.0.1:8443/v1.0/users/jane@contoso.com/photo",
        "https://127.0.0.1:8443/v1.0/users/jane@contoso.com/photo",
    ),
    ("sqlite:////srv/mvsync@site/mvsync.db", "sqlite:////srv/mvsync@site/mvsync.db"),
]


@pytest.mark.parametrize(("url", "masked"), MASKED_URLS)
def test_mask_url_hides_the_password_of_the_user_info_and_of_the_query(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert redact(f"cannot use the store {url} (refused)") == f"cannot use the store {masked} (refused)"


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "exported 12 photos to cn=Jane Doe,ou=People (passwords are never logged)"
    assert redact(text) == text


@pytest.mark.parametrize(
    "text",
    [
        # QA: "refresh_token: *** may only be given as ..." under --json: a setting named in prose
        'mvsync.toml: agents.exo.settings.refresh_token: secrets may only be given as { env = "VARIABLE" }',
        "agents.ad.settings.password: secrets may only be given as { env = .. } or { file = .. }, never inline",
        # Graph's error codes name the failure; the device flow's user code is shown to the user on purpose
        '{"error": {"code": "ResourceNotFound", "message": "no photo"}}',
        '"code": "ErrorCannotUseFolderIdForItemId"',
        '"user_code": "BXFQ7KP3M"',
        # authentication schemes named in prose (the "Basic ***" of a refusal's log line, before)
        "EWS at https://mail does not offer Basic authentication (auth = 'basic'): it offers Negotiate, NTLM",
        "its Windows authentication takes Kerberos only (the Negotiate provider without NTLM, or NTLM refused).",
    ],
)
def test_redact_masks_values_not_setting_names_or_error_codes(text: str) -> None:
    assert redact(text) == text


def test_json_logs_carry_fields_and_never_secrets() -> None:
    out = io.StringIO()
    handler = setup_logging("debug", json_format=True, stream=out)
    try:
        log = logging.getLogger("mvsync.test")
        log.info("token refresh with refresh_token=%s", "0.AXoA" + "x" * 60, extra={"agent": "exo"})
        try:
            raise RuntimeError("LDAP bind password=hunter2 rejected")
        except RuntimeError:
            log.exception("export failed")
        # string fields given through extra= are redacted like the message
        log.warning("store", extra={"detail": "password=sw0rdfish", "url": "postgresql://mv:pg-s3cret@db/mv"})
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
    finally:
        logging.getLogger().removeHandler(handler)
    assert lines[0]["level"] == "info" and lines[0]["logger"] == "mvsync.test" and lines[0]["agent"] == "exo"
    for secret in ("0.AXoA", "hunter2", "sw0rdfish", "pg-s3cret"):
        assert secret not in out.getvalue()
    assert "RuntimeError" in lines[1]["exc"]
    assert lines[2]["url"].startswith("postgresql://mv:")


def test_debug_logs_leave_out_the_authentication_libraries_token_dumps() -> None:
    """QA: at --log-level DEBUG pyspnego logged every NTLM message whole ("NTLM step output: TlRM..."),
    the server's challenge and the client's response with it, which can be cracked offline for the
    password, and requests-gssapi the Authorization header (a Kerberos service ticket)."""
    out = io.StringIO()
    handler = setup_logging("debug", stream=out)
    try:
        logging.getLogger("spnego._ntlm").debug("NTLM step output: %s", "AAAA" * 8)
        logging.getLogger("requests_gssapi.gssapi_").debug("Authorization header: %s", "Negotiate abcd")
        logging.getLogger("spnego._ntlm").info("kept")
    finally:
        logging.getLogger().removeHandler(handler)
    assert "AAAA" not in out.getvalue() and "abcd" not in out.getvalue() and "kept" in out.getvalue()


def test_setup_logging_twice_keeps_one_handler() -> None:
    first = setup_logging("info")
    second = setup_logging("warning", json_format=True)
    try:
        assert first not in logging.getLogger().handlers
        assert sum(isinstance(f, RedactingFilter) for h in logging.getLogger().handlers for f in h.filters) == 1
    finally:
        logging.getLogger().removeHandler(second)


def test_photo_outcomes_of_an_export() -> None:
    from connector.engine._export import photo_outcomes
    from connector.sdk import AttributeChange, CSEntryChange, ExportResult
    from connector.store import blob_ref, dumps

    def change(*changes: AttributeChange) -> CSEntryChange:
        return CSEntryChange.update("user", "a", changes)

    photo = AttributeChange.replace("thumbnailPhoto", b"\xff\xd8jpeg")
    clear = AttributeChange.replace("thumbnailPhoto")
    text = AttributeChange.replace("mail", "a@example.test")
    # a clear counts when the object held a photo (its hologram names a blob; the bytes are not loaded)
    held = dumps({"thumbnailPhoto": blob_ref("ab" * 32, 3), "mail": "x"})
    assert photo_outcomes(change(photo, text), ExportResult.success("a"), None) == ["exported"]
    assert photo_outcomes(change(clear), ExportResult.success("a"), held) == ["cleared"]
    assert photo_outcomes(change(clear), ExportResult.success("a"), dumps({"mail": "x"})) == []
    failed = ExportResult.failed("a", "constraint-violation", "too large")
    assert photo_outcomes(change(photo), failed, held) == ["constraint-violation"]


CLI_CONFIG = """
[store]
url = "sqlite:///store.db"
[agents.src]
type = "connector.bench.generated:GeneratedConnector"
settings = { count = 12, photo_bytes = 16 }
projection = [{ object_class = "person" }]
import_flow = [{ object_class = "person", cs = "accountName", mv = "accountName" }]
[run_profiles.cycle]
steps = [{ type = "full-import", agent = "src" }, { type = "full-sync", agent = "src" }]
"""


def test_cli_writes_the_metrics_textfile_and_json_logs(tmp_path: Path) -> None:
    """What a cron job gets: a .prom file for node_exporter, and log lines a shipper can parse."""
    import os
    import subprocess
    import sys

    config = tmp_path / "mvsync.toml"
    config.write_text(CLI_CONFIG)
    prom = tmp_path / "mvsync.prom"
    mvsync = Path(sys.executable).with_name("mvsync")
    proc = subprocess.run(
        [
            str(mvsync),
            "--metrics-textfile",
            str(prom),
            "--log-format",
            "json",
            "--log-level",
            "INFO",
            "run",
            "cycle",
            "-c",
            str(config),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "MVSYNC_METRICS_TEXTFILE": "", "MVSYNC_LOG_FORMAT": ""},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "success"
    text = prom.read_text()
    assert 'mvsync_steps_total{agent="src",kind="full-import",status="success"} 1.0' in text
    assert 'mvsync_step_objects_total{agent="src",counter="projections",kind="full-sync"} 12.0' in text
    log_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert log_lines, "INFO level should log the run"
    for line in log_lines:
        doc = json.loads(line)  # every line is one JSON object
        assert {"ts", "level", "logger", "message"} <= set(doc)

    bad = subprocess.run([str(mvsync), "--log-level", "LOUD", "connectors", "list"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--log-level" in bad.stderr
    missing = subprocess.run(
        [str(mvsync), "--metrics-textfile", str(tmp_path / "no" / "x.prom"), "connectors", "list"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def _documented_metric_names() -> set[str]:
    """The metric names the README's Monitoring paragraph promises (an operator's alert rules come from it)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    start = readme.index("- **Monitoring.**")
    section = readme[start : readme.index("\n- **", start + 1)]
    return set(re.findall(r"`(mvsync_[a-z_]+)", section))


def _exposed_metric_names() -> set[str]:
    """The names the exposition holds, as Prometheus reads it (a counter's samples end in ``_total``)."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(metrics.REGISTRY).decode()
    return {f.name + ("_total" if f.type == "counter" else "") for f in text_string_to_metric_families(text)}


def test_every_metric_the_readme_names_is_exposed() -> None:
    """Found by parsing the exposition with prometheus_client's parser: the README named the per-object
    error counter ``mvsync_step_errors_total``, the exposition calls it ``mvsync_step_object_errors_total``,
    so an alert written from the README matched nothing and never fired."""
    documented = _documented_metric_names()
    assert len(documented) >= 12  # the paragraph was found
    assert documented <= _exposed_metric_names()


def _textfile_run(tmp_path: Path, prom: Path, *args: str) -> int:
    """The real CLI in its own process, as cron starts it, writing ``prom``; its exit code."""
    import os
    import subprocess
    import sys

    mvsync = Path(sys.executable).with_name("mvsync")
    env = {**os.environ, "MVSYNC_METRICS_TEXTFILE": "", "MVSYNC_LOG_FORMAT": ""}
    command = [str(mvsync), "--metrics-textfile", str(prom), *args, "-c", str(tmp_path / "mvsync.toml")]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env).returncode


def _samples(prom: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The textfile as node_exporter's collector reads it: every sample by name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(prom.read_text(encoding="utf-8"))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_the_textfile_carries_counters_and_last_step_ends_across_runs(tmp_path: Path) -> None:
    """Found by running the real CLI twice, as cron does, then a run refused before its first step:
    each process wrote only its own figures, so ``mvsync_steps_total`` read 1 after every run (a
    counter that never moves: ``increase()`` said 0 runs an hour) and the refused run's file held no
    ``mvsync_step_last_end_timestamp_seconds`` at all, so the README's "alert when a schedule stops
    running" had no series left to fire on exactly when runs stopped working."""
    (tmp_path / "mvsync.toml").write_text(CLI_CONFIG)
    prom = tmp_path / "mvsync.prom"
    src = (("agent", "src"), ("kind", "full-import"))
    steps = ("mvsync_steps_total", (*src, ("status", "success")))
    ends = ("mvsync_step_last_end_timestamp_seconds", (*src, ("status", "success")))
    timed = ("mvsync_step_duration_seconds_count", src)
    adds = ("mvsync_step_objects_total", (("agent", "src"), ("counter", "adds"), ("kind", "full-import")))

    assert _textfile_run(tmp_path, prom, "run", "cycle") == 0
    first = _samples(prom)
    assert (first[steps], first[adds]) == (1, 12)
    assert _textfile_run(tmp_path, prom, "run", "cycle") == 0  # nothing new to add: 0 adds
    second = _samples(prom)
    assert (second[steps], second[timed], second[adds]) == (2, 2, 12)
    assert second[ends] >= first[ends]

    assert _textfile_run(tmp_path, prom, "run", "no-such-profile") == 2
    refused = _samples(prom)
    assert (refused[steps], refused[timed], refused[adds], refused[ends]) == (2, 2, 12, second[ends])


def test_a_second_write_of_one_process_adds_only_what_it_counted_since(tmp_path: Path) -> None:
    """The textfile carries on from its previous figures; a process that writes it twice (the public
    :func:`metrics.write_textfile`) must not add its own earlier figures a second time."""
    prom = tmp_path / "again.prom"
    prom.write_text('# TYPE mvsync_ldap_writes_total counter\nmvsync_ldap_writes_total{result="busy"} 5.0\n')
    metrics.ldap_write("busy")
    metrics.write_textfile(prom)
    ours = value("mvsync_ldap_writes_total", result="busy")  # this process's count, other tests' included
    assert _samples(prom)[("mvsync_ldap_writes_total", (("result", "busy"),))] == 5 + ours
    metrics.ldap_write("busy")
    metrics.write_textfile(prom)
    assert _samples(prom)[("mvsync_ldap_writes_total", (("result", "busy"),))] == 5 + ours + 1


def test_a_textfile_mvsync_cannot_read_starts_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Not a Prometheus file (a wrong path given): said in the log, naming the file, and replaced."""
    prom = tmp_path / "odd.prom"
    prom.write_text("this is { not a metric\n")
    metrics.photo("exported")
    with caplog.at_level(logging.WARNING, logger="mvsync.metrics"):
        metrics.write_textfile(prom)
    assert f"--metrics-textfile {prom}: not a Prometheus text file" in caplog.text
    assert _samples(prom)[("mvsync_photos_total", (("outcome", "exported"),))] >= 1


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_the_textfile_is_readable_by_the_collector_from_the_moment_it_appears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by reading how the file was written under a hardened service's ``UMask=0077``: the temp
    file was created 0600, renamed over the target, and only then opened up to 0644, so a collector
    running as its own account (node_exporter) that read it between the two got "permission denied"
    and a scrape error. Each rename is watched here: what it puts in place must already be 0644."""
    import stat

    seen: list[int] = []
    real_replace, real_rename = os.replace, os.rename

    def watch(real: Callable[..., None]) -> Callable[..., None]:
        def renaming(src: str, dst: str, *args: object, **kwargs: object) -> None:
            if Path(dst).name == "mvsync.prom":
                seen.append(stat.S_IMODE(os.stat(src).st_mode))
            real(src, dst, *args, **kwargs)

        return renaming

    monkeypatch.setattr(os, "replace", watch(real_replace))
    monkeypatch.setattr(os, "rename", watch(real_rename))
    old_umask = os.umask(0o077)
    try:
        metrics.write_textfile(tmp_path / "mvsync.prom")
    finally:
        os.umask(old_umask)
    assert seen == [0o644]


def test_a_run_locked_out_before_its_first_step_is_counted_as_refused(tmp_path: Path) -> None:
    """Found by running the real CLI with ``--metrics-textfile`` while another run held its agent:
    exit 5 and ``stopped-locked`` in history, but nothing in the metrics (no step began, and
    ``mvsync_runs_refused_total`` counted only configuration refusals), although the README documents
    that counter "for runs refused before their first step" and offers the textfile in place of
    alerting on exit codes 4 and 5. A lock refused at a later step is no refusal of the run: its
    first step is counted as a step."""
    from connector.store import LockHeldError

    world = World(tmp_path)
    try:
        refused = value("mvsync_runs_refused_total", profile="full-import", status="stopped-locked")
        with world.engine.store.locks.hold("agent:ad"), pytest.raises(LockHeldError):  # the profile's first agent
            world.run("full-import")
        assert value("mvsync_runs_refused_total", profile="full-import", status="stopped-locked") == refused + 1
        with world.engine.store.locks.hold("agent:exo"), pytest.raises(LockHeldError):  # its second agent
            world.run("full-import")
        assert value("mvsync_runs_refused_total", profile="full-import", status="stopped-locked") == refused + 1
    finally:
        world.close()


def test_a_step_s_last_end_keeps_one_series_per_agent_and_kind_whatever_its_status(tmp_path: Path) -> None:
    """Found by QA: the textfile carried a step's last end over with its ``status`` label, so a step that
    ended ``stopped-authentication`` once kept that series and its old time beside every later
    ``success``, and ``time() - mvsync_step_last_end_timestamp_seconds > X`` (the README's "alert when a
    schedule stops running") fired for ever. The file's own stale pair, from before, is cleaned up too."""
    prom = tmp_path / "ends.prom"
    name = "mvsync_step_last_end_timestamp_seconds"
    prom.write_text(
        f"# TYPE {name} gauge\n"
        f'{name}{{agent="qa",kind="full-import",status="stopped-interrupted"}} 100.0\n'
        f'{name}{{agent="qa",kind="full-import",status="stopped-authentication"}} 200.0\n'
        f'{name}{{agent="qa",kind="delta-import",status="stopped-authentication"}} 300.0\n'
        f'{name}{{agent="qa",kind="delta-import",status="success"}} 250.0\n'
    )
    metrics.step("qa", "full-import", "stopped-authentication", 1.0, {}, 0)
    metrics.write_textfile(prom)
    ends = {
        labels: at for (sample, labels), at in _samples(prom).items() if sample == name and ("agent", "qa") in labels
    }
    full = (("agent", "qa"), ("kind", "full-import"))
    delta = (("agent", "qa"), ("kind", "delta-import"))
    assert set(ends) == {(*full, ("status", "stopped-authentication")), (*delta, ("status", "stopped-authentication"))}
    assert ends[(*full, ("status", "stopped-authentication"))] > 300  # this run's end, not the file's 200
    assert ends[(*delta, ("status", "stopped-authentication"))] == 300  # the newer of the file's two

    metrics.step("qa", "full-import", "success", 1.0, {}, 0)  # the next run of the same process succeeds
    metrics.write_textfile(prom)
    ends = {labels: at for (sample, labels), at in _samples(prom).items() if sample == name and full[0] in labels}
    assert [labels for labels in ends if ("kind", "full-import") in labels] == [(*full, ("status", "success"))]
    assert value(name, agent="qa", kind="full-import", status="stopped-authentication") == 0  # gone in-process too
