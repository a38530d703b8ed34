"""The MSAL token cache, encrypted at rest.

The cache holds the refresh token, which is as good as the admin's consent: anyone holding it can
read every mailbox photo for up to 90 days. So it is Fernet-encrypted (AES-128-CBC + HMAC) with a
key kept apart from the file (an environment variable or a key file), limited to the account that
runs mvsync (mode 0600 on POSIX, an owner-only ACL on Windows), and replaced atomically (temp file,
fsync, rename) so a crash during a refresh-token rotation can never leave a half-written cache and
lose the only valid refresh token. On Windows the cache file and the key file mvsync creates are
also sealed with DPAPI for that account (``connector.secrets``), as msal-extensions does for MSAL
caches: a copy of both files is useless to another account or on another machine.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import msal
from cryptography.fernet import Fernet, InvalidToken

from connector.files import OwnerOnlyError, atomic_write, write_private_file
from connector.sdk import ConfigurationError, StopRunError
from connector.secrets import SecretFileError, read_secret_file, seal, seal_text, unseal

__all__ = [
    "CACHE_FILE_NAME",
    "EncryptedTokenCache",
    "ProcessTokenCache",
    "generate_key_file",
    "key_setting",
    "load_key",
]

CACHE_FILE_NAME = "token-cache.bin"

log = logging.getLogger("mvsync.agent.exchange_online.auth")

#: What to do about a cache that cannot be decrypted, when the caller does not name the command
_REMEDY = "re-authorize (`mvsync auth login`), which replaces it"

_KEY_HELP = (
    'create a key with: python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
)


def key_setting(env_name: str, key_file: Path | None) -> str:
    """The setting the Fernet key comes from: ``token_cache_key_env`` when its variable is set (it
    wins), else ``token_cache_key_file`` when given. Why: a message about the key or the cache it
    decrypts names the setting in use; "token_cache_key_env" was named for a key file's key."""
    if key_file is not None and not os.environ.get(env_name, "").strip():
        return "token_cache_key_file"
    return "token_cache_key_env"


def load_key(env_name: str, key_file: Path | None, *, prefix: str = "") -> bytes:
    """The Fernet key: the environment variable wins, then the key file. Never logged. ``prefix``:
    where the agent's settings are (``agents.exo.settings.``), for the keys messages name."""
    raw = os.environ.get(env_name, "").strip()
    source, key = f"the environment variable {env_name}", f"{prefix}token_cache_key_env"
    if key_setting(env_name, key_file) == "token_cache_key_file" and key_file is not None:
        source, key = f"the key file {key_file}", f"{prefix}token_cache_key_file"
        if not key_file.exists():
            msg = f"token cache key file {key_file} does not exist (`mvsync auth login` creates it)"
            raise ConfigurationError(msg, key=key)
        try:
            raw = read_secret_file(key_file, key=key).strip()
        except SecretFileError as exc:  # its text names the key already
            raise ConfigurationError(str(exc).removeprefix(f"{key}: "), key=key) from None
    if not raw:
        msg = f"no token cache key: set the environment variable {env_name} or token_cache_key_file ({_KEY_HELP})"
        raise ConfigurationError(msg, key=f"{prefix}token_cache_key_env")
    try:
        Fernet(raw.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        msg = f"the token cache key in {source} is not a valid Fernet key ({_KEY_HELP})"
        raise ConfigurationError(msg, key=key) from None
    return raw.encode("ascii")


def generate_key_file(path: Path) -> None:
    """Create a new key file (owner only; DPAPI-sealed on Windows) unless one exists; the caller decides whether to."""
    key = seal_text(Fernet.generate_key().decode("ascii"))
    try:
        write_private_file(path, (key + "\n").encode("ascii"), exclusive=True)
    except OwnerOnlyError as exc:
        raise ConfigurationError(str(exc), key="token_cache_key_file") from None


class EncryptedTokenCache:
    """An ``msal.SerializableTokenCache`` persisted encrypted in one file.

    MSAL rotates the refresh token inside the cache on every refresh; ``persist_if_changed`` is
    called after every MSAL call so the rotated token reaches the disk before it is used again.
    """

    def __init__(
        self,
        path: Path,
        key: bytes,
        *,
        remedy: str = _REMEDY,
        replacing: bool = False,
        key_setting: str = "token_cache_key_env",
    ) -> None:
        """``remedy``: what a message about a cache that cannot be decrypted says to do (the sign-in
        command); ``replacing``: a new sign-in is under way, so such a cache is set aside (see ``_unusable``);
        ``key_setting``: the setting the key came from (``key_setting``), which that message names."""
        self.path = path
        self._key_setting = key_setting
        self._fernet = Fernet(key)
        self._lock = threading.Lock()
        self._remedy = remedy
        self._replacing = replacing
        self.cache = msal.SerializableTokenCache()
        self._load()

    def _load(self) -> None:
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:  # another account's cache (mode 0600), something in the way, a share's error
            msg = (
                f"cannot read the token cache {self.path} ({exc.strerror or exc}): run mvsync as the account "
                "that signed in (`mvsync auth login` writes the cache for the account that runs it), or move "
                "what is in the way and sign in again"
            )
            raise ConfigurationError(msg, key="data_dir") from None
        try:
            self.cache.deserialize(self._fernet.decrypt(unseal(blob)).decode("utf-8"))
        except InvalidToken:
            self._unusable("cannot be decrypted with the configured key (wrong key, or the file was damaged)")
        except ValueError as exc:  # sealed with DPAPI by another account or machine; no MSAL cache inside
            self._unusable(f"cannot be read: {exc}")

    def _unusable(self, why: str) -> None:
        """A cache file that holds no usable sign-in: refused, naming the sign-in that replaces it;
        set aside while that sign-in runs (``replacing``), which writes a new file once it worked.

        Why not refuse it then too: `mvsync auth login`, the remedy every message names, read the
        cache first and stopped with the same error, so the agent stayed stuck until someone deleted
        the file. Nothing is lost by setting it aside: no key reads it, and a sign-in that fails
        writes nothing.
        """
        if not self._replacing:
            raise ConfigurationError(f"the token cache {self.path} {why}; {self._remedy}", key=self._key_setting)
        log.warning("the token cache %s %s: the new sign-in replaces it", self.path, why)
        self.cache = msal.SerializableTokenCache()

    def persist_if_changed(self) -> bool:
        """Write the cache if MSAL changed it (a new or rotated token). Returns whether it wrote."""
        with self._lock:
            if not self.cache.has_state_changed:
                return False
            data = self._fernet.encrypt(self.cache.serialize().encode("utf-8"))
            try:
                atomic_write(self.path, seal(data), private=True)
            except OSError as exc:  # a full disk, a read-only share, another account's folder
                msg = (
                    f"cannot write the token cache {self.path} ({exc.strerror or exc}): the renewed sign-in is "
                    "not saved (the file keeps the one before). Free space there, or let the account running "
                    "mvsync write to that folder, and run again"
                )
                raise StopRunError(msg) from None
            self.cache.has_state_changed = False
            return True

    def clear(self) -> str:
        """Forget every token (before a new sign-in); returns what was forgotten, for :meth:`restore`."""
        with self._lock:
            kept: str = self.cache.serialize()
            self.cache.deserialize("{}")
            self.cache.has_state_changed = True
            return kept

    def restore(self, kept: str) -> None:
        """Back to what :meth:`clear` returned, as if it had never run (nothing is written)."""
        with self._lock:
            self.cache.deserialize(kept)
            self.cache.has_state_changed = False


class ProcessTokenCache:
    """The tokens of ``auth_mode = "app"`` (client credentials), kept for one process only.

    Why not on disk: an app token is one request away at any time, while a cached one hides a
    client secret or certificate that stopped working (rotated, expired, removed from the app
    registration) for up to an hour: ``mvsync doctor`` and the first run after a rotation would
    pass and the 03:00 run fail. So each process proves its credential once, and nothing is left
    on disk to protect (no key is needed).
    """

    def __init__(self) -> None:
        self.cache = msal.SerializableTokenCache()

    def persist_if_changed(self) -> bool:
        """Nothing to write: the tokens live as long as the process."""
        return False

    def clear(self) -> str:
        kept: str = self.cache.serialize()
        self.cache.deserialize("{}")
        return kept

    def restore(self, kept: str) -> None:
        self.cache.deserialize(kept)
