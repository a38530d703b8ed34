"""Secret files and configuration in every encoding a Windows admin produces, through every place mvsync
reads one, and owner-only atomic writes (``connector.secrets``, ``connector.files``)."""

from __future__ import annotations

import codecs
import os
import stat
import sys
import threading
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import NamedTuple

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from connector.agents.exchange_online._tokencache import generate_key_file, load_key
from connector.config import ConfigError, load_config, validate_settings
from connector.engine import load_metaverse_schema, open_connector
from connector.files import _network_mount, _windows_network_drive, atomic_write, write_private_file
from connector.sdk import ConfigurationError, ConnectorSettings
from connector.secrets import SecretFileError, decode_secret, read_secret_file, seal, seal_text, unseal, unseal_text

SECRET = "Pässwörd-€-1"

#: What Windows tools write: PowerShell 5.1 ``>``/``Out-File`` (UTF-16 LE + BOM, CRLF),
#: ``Set-Content -Encoding utf8`` (UTF-8 + BOM), Notepad "UTF-16 BE", a Linux ``echo`` (UTF-8, LF).
ENCODINGS = {
    "utf-8": lambda text: text.encode("utf-8"),
    "utf-8-bom": lambda text: codecs.BOM_UTF8 + text.encode("utf-8"),
    "utf-16-le-bom": lambda text: codecs.BOM_UTF16_LE + text.encode("utf-16-le"),
    "utf-16-be-bom": lambda text: codecs.BOM_UTF16_BE + text.encode("utf-16-be"),
}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("ending", ["", "\n", "\r\n", "\r\n\r\n"])
def test_every_windows_encoding_gives_the_same_secret(tmp_path: Path, encoding: str, ending: str) -> None:
    path = tmp_path / "password.txt"
    path.write_bytes(ENCODINGS[encoding](SECRET + ending))
    assert read_secret_file(path, key="agents.ad.settings.password") == SECRET


def test_inner_whitespace_and_leading_spaces_are_kept() -> None:
    # only trailing newlines go: a password may end in a space or start with one
    assert decode_secret(b" pass word \n") == " pass word "


class _AdSettings(ConnectorSettings):
    password: SecretStr


def test_a_powershell_utf16_file_reference_in_mvsync_toml(tmp_path: Path) -> None:
    (tmp_path / "ad-password").write_bytes(ENCODINGS["utf-16-le-bom"](SECRET + "\r\n"))
    settings = validate_settings(
        _AdSettings,
        {"password": {"file": "ad-password"}},
        key="agents.ad.settings",
        file=tmp_path / "mvsync.toml",
        base_dir=tmp_path,
    )
    assert settings.password.get_secret_value() == SECRET  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\xff\xfe\x00\xd8", "not valid utf-16-le"),  # a lone high surrogate after a UTF-16 LE BOM
        (b"caf\xe9\n", "line 1 (byte 3) is not valid utf-8"),  # Latin-1 (Windows-1252) text
        ("secret".encode("utf-16-le"), "NUL characters"),  # UTF-16 without its BOM
    ],
)
def test_an_undecodable_file_names_the_key_and_the_file_and_not_the_content(
    tmp_path: Path, content: bytes, why: str
) -> None:
    path = tmp_path / "ad-password"
    path.write_bytes(content)
    cfg = tmp_path / "mvsync.toml"
    with pytest.raises(ConfigError) as info:
        validate_settings(
            _AdSettings, {"password": {"file": str(path)}}, key="agents.ad.settings", file=cfg, base_dir=tmp_path
        )
    message = str(info.value)
    assert message.startswith(f"{cfg}: agents.ad.settings.password: secret file {path} cannot be decoded: ")
    assert why in message and "UTF-16 with a BOM" in message
    assert "caf" not in message and "secret" not in message.split("cannot be decoded")[1]


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_the_configuration_and_a_metaverse_schema_read_in_every_windows_encoding(tmp_path: Path, encoding: str) -> None:
    # Notepad's and PowerShell's encodings, CRLF line ends; the schema is the user's own TOML file
    schema = '[object_types.person]\r\nattributes = [{ name = "displayName", type = "string" }]\r\n'
    (tmp_path / "schema.toml").write_bytes(ENCODINGS[encoding](schema))
    text = (
        '[store]\r\nurl = "sqlite:///mvsync.db"\r\n[metaverse]\r\nschema = "schema.toml"\r\n'
        '[agents.hr]\r\ntype = "photo-folder"\r\nsettings = { path = "Fotos-Müller" }\r\n'
    )
    (tmp_path / "mvsync.toml").write_bytes(ENCODINGS[encoding](text))
    config = load_config(tmp_path / "mvsync.toml")
    assert config.agents["hr"].settings == {"path": "Fotos-Müller"}
    assert [c.name for c in load_metaverse_schema(config).object_classes] == ["person"]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"[store]\r\n# Jos\xe9\r\n", "line 2 (byte 14) is not valid utf-8"),
        ("[store]".encode("utf-16-le"), "NUL characters"),
    ],
)
def test_a_configuration_in_another_encoding_is_named_with_what_to_do(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "mvsync.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: not readable as text: ") and why in str(info.value)
    assert "save" in str(info.value) and "UTF-16 with a BOM" in str(info.value)


def test_a_missing_secret_file_names_the_key_and_the_file(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match=r"^k: secret file .*/nope does not exist$"):
        read_secret_file(tmp_path / "nope", key="k")


def test_token_cache_key_file_in_utf16_and_a_broken_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    key = Fernet.generate_key()
    key_file = tmp_path / "cache.key"
    key_file.write_bytes(ENCODINGS["utf-16-le-bom"](key.decode() + "\r\n"))
    assert load_key("NO_SUCH_KEY_VAR", key_file) == key
    key_file.write_bytes(b"\xff\xfe\x00\xd8")
    with pytest.raises(ConfigurationError) as info:
        load_key("NO_SUCH_KEY_VAR", key_file)
    assert str(info.value).startswith(f"token_cache_key_file: secret file {key_file} cannot be decoded")  # named once
    key_file.write_text("not a key\n")
    with pytest.raises(ConfigurationError) as info:
        load_key("NO_SUCH_KEY_VAR", key_file)
    assert str(info.value).startswith(
        f"token_cache_key_file: the token cache key in the key file {key_file} is not a valid Fernet key ("
    )
    monkeypatch.setenv("NO_SUCH_KEY_VAR", "not a key either")
    with pytest.raises(ConfigurationError) as info:
        load_key("NO_SUCH_KEY_VAR", key_file)
    assert str(info.value).startswith(
        "token_cache_key_env: the token cache key in the environment variable NO_SUCH_KEY_VAR is not a valid"
    )


@pytest.mark.parametrize("content", [b"", b"\r\n", b"  \n"], ids=["empty", "a-newline", "blanks"])
def test_an_empty_secret_file_names_the_key_and_the_file(tmp_path: Path, content: bytes) -> None:
    """An empty password or refresh-token file used to be sent as is: the identity server's "body
    must contain refresh_token" or an LDAP bind error then hid which setting and file were wrong."""
    path = tmp_path / "refresh.token"
    path.write_bytes(content)
    with pytest.raises(SecretFileError) as info:
        read_secret_file(path, key="agents.exo.settings.refresh_token")
    assert str(info.value) == (
        f"agents.exo.settings.refresh_token: secret file {path} is empty: write the secret into it"
    )


def test_generated_key_file_is_owner_only_and_never_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    key_file = tmp_path / "keys" / "cache.key"
    generate_key_file(key_file)
    key = load_key("NO_SUCH_KEY_VAR", key_file)
    if sys.platform != "win32":
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        generate_key_file(key_file)
    assert load_key("NO_SUCH_KEY_VAR", key_file) == key


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_private_atomic_write_is_0600_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "cache.bin"
    target.write_bytes(b"old")
    target.chmod(0o644)
    atomic_write(target, b"new", private=True)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["cache.bin"]


def test_readers_see_the_old_or_the_new_content_never_a_mix(tmp_path: Path) -> None:
    target = tmp_path / "holder.json"
    old, new = b"a" * 200_000, b"b" * 200_000
    write_private_file(target, old)
    seen: set[bytes] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(target.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(20):
            atomic_write(target, new)
            atomic_write(target, old)
    finally:
        stop.set()
        reader.join()
    assert seen <= {old, new}


def test_sealing_is_a_no_op_off_windows_and_sealed_data_is_refused_there() -> None:
    if sys.platform == "win32":
        assert unseal(seal(b"rt")) == b"rt" and seal(b"rt") != b"rt"
        assert unseal_text(seal_text("key")) == "key"
        return
    assert seal(b"rt") == b"rt" and seal_text("key") == "key"
    with pytest.raises(ValueError, match="sealed with Windows DPAPI"):
        unseal(b"mvsync-dpapi:AAAA")
    with pytest.raises(ValueError, match="damaged"):
        unseal_text("mvsync-dpapi:not base64!")


@pytest.fixture
def fake_dpapi(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Windows branch of connector.secrets with a stand-in for crypt32 (the framing is what is tested).

    The stand-in reverses and tags the bytes and refuses blobs it did not make, as DPAPI refuses a
    blob sealed by another account; the real CryptProtectData call only runs on Windows.
    """
    import connector.secrets as secrets_module

    def dpapi(data: bytes, *, protect: bool) -> bytes:
        if protect:
            return b"DP" + data[::-1]
        if not data.startswith(b"DP"):
            raise OSError("The parameter is incorrect")
        return data[2:][::-1]

    monkeypatch.setattr(secrets_module, "DPAPI_AVAILABLE", True)
    monkeypatch.setattr(secrets_module, "_dpapi", dpapi)


@pytest.mark.usefixtures("fake_dpapi")
def test_windows_key_file_and_token_cache_are_sealed_and_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.agents.exchange_online._tokencache import EncryptedTokenCache

    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    key_file = tmp_path / "cache.key"
    generate_key_file(key_file)
    assert key_file.read_text(encoding="ascii").startswith("mvsync-dpapi:")
    key = load_key("NO_SUCH_KEY_VAR", key_file)
    Fernet(key)  # the unsealed key is a Fernet key again
    cache = EncryptedTokenCache(tmp_path / "token-cache.bin", key)
    cache.cache.deserialize('{"RefreshToken": {}}')
    cache.cache.has_state_changed = True
    assert cache.persist_if_changed()
    assert (tmp_path / "token-cache.bin").read_bytes().startswith(b"mvsync-dpapi:DP")
    EncryptedTokenCache(tmp_path / "token-cache.bin", key)  # reads it back


@pytest.mark.usefixtures("fake_dpapi")
def test_a_file_sealed_by_another_account_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from connector.agents.exchange_online._tokencache import EncryptedTokenCache

    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    key_file = tmp_path / "cache.key"
    key_file.write_text("mvsync-dpapi:" + "QUJD" + "\n", encoding="ascii")  # a blob this account did not seal
    with pytest.raises(ConfigurationError, match="sealed by another account or on another machine"):
        load_key("NO_SUCH_KEY_VAR", key_file)
    (tmp_path / "c.bin").write_bytes(b"mvsync-dpapi:XYZ")
    with pytest.raises(ConfigurationError) as info:
        EncryptedTokenCache(tmp_path / "c.bin", Fernet.generate_key())
    assert f"the token cache {tmp_path / 'c.bin'} cannot be read" in str(info.value)
    assert "re-authorize" in str(info.value)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('[agents.hr]\ntype = "photo-folder"\nsettings = { path = "C:\\temp\\new" }', "agents.hr.settings.path"),
        ('[store]\nurl = "sqlite:///D:\\tables\\backup.db"', "store.url"),
        ('data_dir = "C:\\new\\temp"', "data_dir"),
    ],
)
def test_a_windows_path_in_double_quotes_is_refused_with_how_to_write_it(tmp_path: Path, line: str, key: str) -> None:
    # TOML reads \t and \n in "..." as a tab and a line break: the path meant is gone, not "not found"
    path = tmp_path / "mvsync.toml"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        config = load_config(path)
        for agent in config.agents:  # an agent's settings are read when its connector is built
            open_connector(config, agent)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: the path contains \\")
    assert "single quotes" in message and "forward slashes" in message


def test_a_windows_path_with_another_backslash_is_a_toml_error_with_the_same_advice(tmp_path: Path) -> None:
    path = tmp_path / "mvsync.toml"
    path.write_text('[agents.hr]\ntype = "photo-folder"\nsettings = { path = "C:\\Photos\\HR" }\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"not valid TOML: .*single quotes .*forward slashes"):
        load_config(path)
    # the two ways the advice gives both work
    for written in ("'C:\\Photos\\HR'", '"C:/Photos/HR"'):
        path.write_text(f'[agents.hr]\ntype = "photo-folder"\nsettings = {{ path = {written} }}\n', encoding="utf-8")
        assert load_config(path).agents["hr"].settings["path"] in ("C:\\Photos\\HR", "C:/Photos/HR")


class _Mount(NamedTuple):
    """psutil's ``sdiskpart``."""

    device: str
    mountpoint: str
    fstype: str
    opts: str


LINUX_MOUNTS = [
    _Mount("/dev/sda1", "/", "ext4", "rw"),
    _Mount("//files/hr", "/mnt/hr", "cifs", "rw,relatime"),
    _Mount("nas:/export", "/srv/mvsync", "nfs4", "rw"),
    _Mount("/dev/sdb1", "/srv/mvsync/local", "xfs", "rw"),
]
WINDOWS_DRIVES = [_Mount("C:\\", "C:\\", "NTFS", "rw,fixed"), _Mount("Z:\\", "Z:\\", "", "rw,remote")]


@pytest.mark.parametrize(
    ("path", "mounts", "expected"),
    [
        (PurePosixPath("/mnt/hr/mvsync/mvsync.db"), LINUX_MOUNTS, "//files/hr (cifs) on /mnt/hr"),
        (PurePosixPath("/srv/mvsync/mvsync.db"), LINUX_MOUNTS, "nas:/export (nfs4) on /srv/mvsync"),
        (PurePosixPath("/srv/mvsync/local/mvsync.db"), LINUX_MOUNTS, None),  # a local disk mounted below a share
        (PurePosixPath("/mnt/hrx/mvsync.db"), LINUX_MOUNTS, None),  # a prefix of the name is not a parent
        (PurePosixPath("/var/lib/mvsync/mvsync.db"), LINUX_MOUNTS, None),
        (PureWindowsPath("z:\\mvsync\\mvsync.db"), WINDOWS_DRIVES, "Z:\\ (network drive) on Z:\\"),
        (PureWindowsPath("C:\\ProgramData\\mvsync\\mvsync.db"), WINDOWS_DRIVES, None),
        (PurePosixPath("/anywhere/mvsync.db"), [], None),  # nothing known: no alarm
    ],
)
def test_a_store_on_a_share_or_an_nfs_mount_is_recognised(
    path: PurePath, mounts: list[_Mount], expected: str | None
) -> None:
    assert _network_mount(path, mounts) == expected


@pytest.mark.skipif(sys.platform == "win32", reason="mounts come from psutil off Windows; Windows asks GetDriveTypeW")
def test_a_sqlite_store_on_a_network_mount_is_a_warning_in_doctor_and_in_each_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # the operating system's answer is psutil's to give; here it says the store's folder is a cifs share
    import psutil

    from connector.doctor import run_doctor
    from tests.engine.conftest import World

    world = World(tmp_path)
    try:
        mounts = [_Mount("/dev/sda1", "/", "ext4", "rw"), _Mount("//files/mvsync", str(tmp_path), "cifs", "rw")]
        monkeypatch.setattr(psutil, "disk_partitions", lambda all=False: mounts)
        report = run_doctor(world.config, connect=False)
        [found] = [f for f in report.findings if f.check == "location"]
        assert found.severity == "warning" and report.ok
        assert "is on a network file system (//files/mvsync (cifs) on" in found.message
        assert "keep it on a local disk" in found.message and "PostgreSQL" in found.message
        with caplog.at_level("WARNING", logger="mvsync.engine"):
            assert world.run("full-import").status == "success"  # a warning, not a refusal
        assert any("is on a network file system" in r.getMessage() for r in caplog.records)
    finally:
        world.close()


@pytest.mark.parametrize(
    ("given", "resolved", "expected"),
    [
        ("\\\\files\\mvsync\\mvsync.db", "\\\\files\\mvsync\\mvsync.db", "\\\\files\\mvsync (a network share)"),
        ("Z:\\mvsync.db", "\\\\files\\hr\\mvsync.db", "\\\\files\\hr (a network share)"),  # a mapped drive, resolved
        ("C:\\ProgramData\\mvsync\\mvsync.db", "C:\\ProgramData\\mvsync\\mvsync.db", None),
    ],
)
def test_a_windows_store_on_a_unc_share_is_recognised(given: str, resolved: str, expected: str | None) -> None:
    # (a drive letter is asked of GetDriveTypeW on Windows itself; this covers the paths alone)
    assert _windows_network_drive(PureWindowsPath(given), PureWindowsPath(resolved)) == expected


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('[agents.hr]\ntype = "photo-folder\n', "a quoted value is not closed before the end of its line"),
        ('[agents.hr]\nsettings = { path = "C:\\Users\\hr" }\n', "single quotes"),
    ],
    ids=["quote-left-open", "backslash-U"],
)
def test_a_toml_error_gets_the_hint_for_what_it_is(tmp_path: Path, text: str, said: str) -> None:
    """Found by QA: a quote left open ("Illegal character '\\n'") was told about Windows paths, as tomllib's
    text held a backslash; and ``"C:\\Users"`` ("Invalid hex value": ``\\U`` starts an escape) got no hint."""
    path = tmp_path / "mvsync.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid TOML: ") and said in message
    assert ("single quotes" in message) == (said == "single quotes")
