"""Reading secret files as a Windows or Linux admin writes them, and protecting secrets at rest.

Every secret mvsync reads from a file (a ``{ file = ... }`` reference in ``mvsync.toml``, the token
cache key file, an imported refresh token) goes through :func:`read_secret_file`, so they all accept
the same encodings as every text file mvsync reads (:func:`connector.files.decode_text`: UTF-8 with or
without a BOM, UTF-16 with one, as Windows tools write them) and fail the same way. A BOM left inside
a password, or a ``UnicodeDecodeError`` that names neither the file nor the key, costs an admin an
afternoon.

On Windows the token cache and its key are additionally sealed with DPAPI (the per-user data
protection API, what msal-extensions' ``FilePersistenceWithDataProtection`` uses for MSAL caches):
only the same account on the same machine can unseal them, whatever the file's ACL.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

from connector.files import decode_text

__all__ = [
    "DPAPI_AVAILABLE",
    "SecretFileError",
    "decode_secret",
    "read_secret_file",
    "seal",
    "seal_text",
    "unseal",
    "unseal_text",
]

#: Whether :func:`seal` protects with DPAPI here (Windows) or leaves data as it is (POSIX).
DPAPI_AVAILABLE = sys.platform == "win32"

_SEALED = b"mvsync-dpapi:"  # prefix of DPAPI-sealed data, so a sealed file is recognised on reading
_ENTROPY = b"mvsync secret at rest"


class SecretFileError(Exception):
    """A secret file that cannot be used; the message names the key and the file, never the content."""


def decode_secret(data: bytes) -> str:
    """The text of a secret file (see :func:`connector.files.decode_text`), trailing newlines stripped.

    Raises ``ValueError`` (with no secret content in it) when the bytes are not such text.
    """
    return decode_text(data).rstrip("\r\n")


def read_secret_file(path: Path, *, key: str) -> str:
    """The secret in ``path``, decoded (see :func:`decode_secret`) and unsealed if mvsync sealed it.

    ``key`` is what the secret configures (``mvsync.toml: agents.ad.settings.password``); errors name
    it and the file, so an admin knows which setting and which file to fix.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SecretFileError(f"{key}: secret file {path} does not exist") from None
    except OSError as exc:
        raise SecretFileError(f"{key}: cannot read secret file {path}: {exc.strerror}") from None
    try:
        text = unseal_text(decode_secret(data))
    except ValueError as exc:
        raise SecretFileError(f"{key}: secret file {path} cannot be decoded: {exc}") from None
    if not text.strip():  # no secret is blank: the server's "missing password" would hide which file is wrong
        raise SecretFileError(f"{key}: secret file {path} is empty: write the secret into it")
    return text


def seal(data: bytes) -> bytes:
    """``data`` protected for the current account with DPAPI on Windows; unchanged elsewhere.

    On POSIX the protection of secrets at rest is the file mode (0600) and, for the token cache,
    the Fernet key kept apart from it; there is no per-user sealing service on a headless server.
    """
    if not DPAPI_AVAILABLE:
        return data
    return _SEALED + _dpapi(data, protect=True)


def unseal(data: bytes) -> bytes:
    """The inverse of :func:`seal`: data without the sealed prefix is returned as it is.

    Raises ``ValueError`` when the data is sealed but cannot be unsealed here (another account,
    another machine, or not Windows).
    """
    if not data.startswith(_SEALED):
        return data
    if not DPAPI_AVAILABLE:
        raise ValueError("it is sealed with Windows DPAPI and can only be read by the same account on Windows")
    try:
        return _dpapi(data[len(_SEALED) :], protect=False)
    except OSError as exc:
        msg = f"Windows DPAPI cannot unseal it ({exc}); it was sealed by another account or on another machine"
        raise ValueError(msg) from None


def seal_text(text: str) -> str:
    """A text secret sealed for a text file (``mvsync-dpapi:<base64>``) on Windows; unchanged elsewhere."""
    if not DPAPI_AVAILABLE:
        return text
    sealed = seal(text.encode("utf-8"))
    return (_SEALED + base64.b64encode(sealed[len(_SEALED) :])).decode("ascii")


def unseal_text(text: str) -> str:
    """The inverse of :func:`seal_text` (text that was not sealed comes back unchanged)."""
    if not text.startswith(_SEALED.decode("ascii")):
        return text
    try:
        blob = base64.b64decode(text[len(_SEALED) :].strip(), validate=True)
    except ValueError:
        raise ValueError("its sealed (mvsync-dpapi:) content is damaged") from None
    return unseal(_SEALED + blob).decode("utf-8")


if sys.platform == "win32":
    import ctypes
    from ctypes import wintypes

    class _Blob(ctypes.Structure):
        _fields_ = [("cbData", wintypes.DWORD), ("pbData", ctypes.POINTER(ctypes.c_char))]

    _CRYPTPROTECT_UI_FORBIDDEN = 0x01

    def _blob(data: bytes) -> tuple[_Blob, ctypes.Array[ctypes.c_char]]:
        buffer = ctypes.create_string_buffer(data, len(data))
        return _Blob(len(data), ctypes.cast(buffer, ctypes.POINTER(ctypes.c_char))), buffer

    def _dpapi(data: bytes, *, protect: bool) -> bytes:
        """``CryptProtectData`` / ``CryptUnprotectData`` through ctypes (as msal-extensions does: no pywin32)."""
        crypt32 = ctypes.windll.crypt32
        blob_in, _keep_in = _blob(data)
        entropy, _keep_entropy = _blob(_ENTROPY)
        blob_out = _Blob()
        func = crypt32.CryptProtectData if protect else crypt32.CryptUnprotectData
        ok = func(
            ctypes.byref(blob_in),
            None,
            ctypes.byref(entropy),
            None,
            None,
            _CRYPTPROTECT_UI_FORBIDDEN,
            ctypes.byref(blob_out),
        )
        if not ok:
            raise ctypes.WinError()
        try:
            return ctypes.string_at(blob_out.pbData, blob_out.cbData)
        finally:
            ctypes.windll.kernel32.LocalFree(blob_out.pbData)

else:

    def _dpapi(data: bytes, *, protect: bool) -> bytes:
        raise OSError("DPAPI exists only on Windows")
