"""The demo's world around the emulated tenant: the on-premises users and the HR photo folder.

Shared by ``mvsync demo``, the end-to-end test and ``mvsync bench e2e`` so all three build the
same situation from an emulator's user list:

* on-premises, every tenant user exists in AD (``sAMAccountName`` = ``mailNickname``, the
  emulator's naming rule, and the same ``userPrincipalName``), except every 20th, who is
  cloud-only; plus two service accounts that exist only on-premises. So some people join, some
  Exchange Online users stay disconnectors, some AD users never get a photo;
* the HR folder holds photos for a few AD users who have no Exchange Online photo (the folder is
  their fallback) and one for someone who does (Exchange Online wins by precedence);
* hybrid: the tenant's users with an on-premises mailbox (about 8 %) keep their photo in Exchange
  Server, which Graph cannot read; ``start_ews`` serves those photos from an EWS emulator and
  ``write_mailbox_file`` lists the mailboxes for the ``exs`` agent, as ``Get-Mailbox`` would.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.demo._directory import write_ldif

__all__ = [
    "CLOUD_ONLY_EVERY",
    "DirectoryUser",
    "SharedNames",
    "directory_users",
    "start_ews",
    "write_hr_folder",
    "write_mailbox_file",
    "write_snapshot",
]

CLOUD_ONLY_EVERY = 20
_SERVICE_ACCOUNTS = ("svc.backup", "svc.scanner")
#: The sAMAccountName limit (the pre-Windows 2000 logon name of a user).
_SAM_MAX = 20


@dataclass(frozen=True, slots=True)
class SharedNames:
    """What one run calls its objects in a directory that other runs use at the same time (the test DC
    that parallel test sessions and benchmarks lease, a lab domain).

    Why: AD keeps ``sAMAccountName`` and ``userPrincipalName`` unique in the whole domain, and a run
    deletes its OU before and after; with fixed names, a second run's users were refused
    (entryAlreadyExists, constraintViolation) or its clean-up deleted the first run's OU under it.
    The tag goes into the OU's name, before every account name and into the tenant's domain (the UPNs).
    """

    tag: str

    @classmethod
    def new(cls) -> SharedNames:
        """A random tag: short, because it goes before names that sAMAccountName's 20 characters must hold."""
        return cls(secrets.token_hex(2))

    def ou(self, stem: str) -> str:
        return f"OU={stem}-{self.tag}"

    @property
    def account_prefix(self) -> str:
        return f"{self.tag}-"

    def domain(self, domain: str = "contoso.example") -> str:
        return f"{self.tag}.{domain}"


@dataclass(frozen=True)
class DirectoryUser:
    """An on-premises user as the demo's AD holds it."""

    sam: str
    upn: str
    mail: str | None
    display_name: str
    #: Whether Exchange Online has a photo for this person (None: not in the tenant).
    exo_photo: bool | None
    #: The mailbox is on Exchange Server (hybrid), and whether it holds a photo.
    onprem_mailbox: bool = False
    exs_photo: bool = False

    @property
    def guid(self) -> str:
        """A stable objectGUID for the snapshot (a real DC assigns its own)."""
        return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"mvsync-demo:{self.sam}"))


def directory_users(
    tenant_users: Iterable[dict[str, Any]], domain: str, *, account_prefix: str = ""
) -> list[DirectoryUser]:
    """The AD side of the demo from the emulator's users (``admin.users()``).

    ``account_prefix`` goes before every ``sAMAccountName`` (service accounts included): the name
    must be unique in the whole domain, so two scenarios sharing one DC need different prefixes. A name
    the prefix makes longer than sAMAccountName allows is cut to fit (``_account_name``).
    """
    out = []
    taken: set[str] = set()
    for n, user in enumerate(u for u in tenant_users if not u.get("deleted")):
        if n % CLOUD_ONLY_EVERY == CLOUD_ONLY_EVERY - 1:
            continue  # cloud-only: no on-premises account
        if user.get("userType") == "Guest":
            continue  # a B2B guest: an account elsewhere, none on-premises here
        out.append(
            DirectoryUser(
                sam=_account_name(account_prefix + str(user["mailNickname"]), taken),
                upn=str(user["userPrincipalName"]),
                mail=user.get("mail"),
                display_name=str(user.get("displayName") or user["mailNickname"]),
                exo_photo=bool(user.get("hasPhoto")) and user.get("mailbox") == "cloud",
                onprem_mailbox=user.get("mailbox") == "on-premises" and bool(user.get("mail")),
                exs_photo=bool(user.get("hasPhoto")) and user.get("mailbox") == "on-premises",
            )
        )
    for service in _SERVICE_ACCOUNTS:
        sam = _account_name(account_prefix + service, taken)
        out.append(DirectoryUser(sam, f"{sam}@{domain}", None, sam, None))
    return out


def _account_name(name: str, taken: set[str]) -> str:
    """``name`` cut to sAMAccountName's 20 characters, numbered when the cut meets a name already ``taken``
    (``anna.montgomery-smit`` and ``...2``), and added to ``taken``.

    Why: the emulator's names use up to 20 characters; a prefix cut two of them to one name, which the
    DC refuses for the second (and the HR folder's file name would be ambiguous)."""
    candidate, number = name[:_SAM_MAX], 1
    while candidate.lower() in taken:
        number += 1
        candidate = name[: _SAM_MAX - len(str(number))] + str(number)
    taken.add(candidate.lower())
    return candidate


def write_snapshot(path: Path, users: Sequence[DirectoryUser], base_dn: str) -> None:
    """The LDIF snapshot the demo's AD stand-in reads (see ``_directory``)."""
    entries = []
    for n, user in enumerate(users, 1):
        entry: dict[str, Any] = {
            "dn": f"CN={user.sam},{base_dn}",
            "objectClass": "user",
            "objectGUID": user.guid,
            "sAMAccountName": user.sam,
            "userPrincipalName": user.upn,
            "displayName": user.display_name,
            "uSNChanged": str(n),
        }
        if user.mail:
            entry["mail"] = user.mail
        entries.append(entry)
    write_ldif(path, entries)


def _onprem_mailboxes(tenant_users: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [u for u in tenant_users if u.get("mailbox") == "on-premises" and u.get("mail") and not u.get("deleted")]


def write_mailbox_file(path: Path, tenant_users: Iterable[dict[str, Any]]) -> Path:
    """The on-premises mailboxes, one address a line (what ``Get-Mailbox ... | % PrimarySmtpAddress`` prints)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"{u['mail']}\n" for u in _onprem_mailboxes(tenant_users))
    path.write_text("# on-premises mailboxes (Exchange Server)\n" + lines, encoding="utf-8")
    return path


def start_ews(tenant_users: Iterable[dict[str, Any]], **config: Any) -> Any:
    """A running EWS emulator with the tenant's on-premises mailboxes, a 648x648 photo for those with one."""
    from connector.emulator import EwsConfig, EwsEmulator

    emulator = EwsEmulator(EwsConfig(**config)).start()
    for user in _onprem_mailboxes(tenant_users):
        mail = str(user["mail"])
        emulator.add_mailbox(mail, photo=_portrait(mail, 648) if user.get("hasPhoto") else None)
    return emulator


def _portrait(name: str, size: int = 400) -> bytes:
    """A simple, deterministic head-and-shoulders JPEG in a colour derived from ``name``."""
    from PIL import Image, ImageDraw

    digest = hashlib.sha256(name.encode()).digest()
    background = (digest[0] // 2 + 100, digest[1] // 2 + 100, digest[2] // 2 + 100)
    figure = (digest[3] // 3, digest[4] // 3, digest[5] // 3)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    s = size
    draw.ellipse((s * 0.32, s * 0.14, s * 0.68, s * 0.56), fill=figure)
    draw.ellipse((s * 0.12, s * 0.6, s * 0.88, s * 1.3), fill=figure)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def write_hr_folder(path: Path, users: Sequence[DirectoryUser], fallbacks: int = 4) -> dict[str, list[str]]:
    """HR photos: ``fallbacks`` people without an Exchange Online photo, one person with one.

    Returns the account names by role: ``fallback`` (their AD thumbnail comes from here) and
    ``shadowed`` (Exchange Online's photo wins).
    """
    path.mkdir(parents=True, exist_ok=True)
    without = [u for u in users if u.exo_photo is False][:fallbacks]
    with_photo = [u for u in users if u.exo_photo][:1]
    for user in without:
        (path / f"{user.sam}.jpg").write_bytes(_portrait(user.sam))
    for user in with_photo:
        (path / f"{user.sam} HR 2019.jpg").write_bytes(_portrait(user.sam + "-hr"))
    return {"fallback": [u.sam for u in without], "shadowed": [u.sam for u in with_photo]}
