"""Tenant state: users, photos and the change log behind ``/users/delta``.

Naming convention (AD tests rely on it): ``mailNickname`` is the AD ``sAMAccountName`` the user
would have on-premises: lower-case ASCII ``given.surname`` (accents folded, other characters
dropped), at most 20 characters (the sAMAccountName limit), with a numeric suffix for duplicates
(``anna.smith2``). With ``naming="numbered"`` it is ``u00042``. ``userPrincipalName`` is
``<mailNickname>@<domain>``. ``mail`` is ``Given.Surname@<domain>`` for users with a mailbox (so it
differs from the UPN, as in real tenants) and null for users without one.

Not thread-safe: the emulator touches it only from its event loop.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import re
import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from connector.emulator._photos import PhotoTemplates, image_dimensions, reencode_jpeg

__all__ = ["MAILBOX_KINDS", "Photo", "Tenant", "User", "make_sam_account_name"]

MailboxKind = Literal["cloud", "on-premises", "none"]
MAILBOX_KINDS: tuple[MailboxKind, ...] = ("cloud", "on-premises", "none")

#: Properties of a user as Graph serves them (subset of microsoft.graph.user), in Graph's order.
USER_PROPERTIES = (
    "id",
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "accountEnabled",
    "mailNickname",
    "department",
    "companyName",
    "employeeId",
    "createdDateTime",
    "userType",
    "usageLocation",
    "proxyAddresses",
    "aboutMe",
)
DEFAULT_PROPERTIES = (
    "businessPhones",
    "displayName",
    "givenName",
    "id",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
)

_GIVEN = (
    "Adele",
    "Alex",
    "Anna",
    "Ben",
    "Björn",
    "Carla",
    "Chloé",
    "Daniel",
    "Diego",
    "Eva",
    "Fatima",
    "Femi",
    "Grace",
    "Hannah",
    "Ivan",
    "Jean-Luc",
    "Jens",
    "Joanna",
    "José",
    "Karin",
    "Kenji",
    "Lars",
    "Lea",
    "Łukasz",
    "Maria",
    "Mei",
    "Miriam",
    "Noah",
    "Nora",
    "Olga",
    "Omar",
    "Paula",
    "Pierre",
    "Priya",
    "Rahul",
    "Rosa",
    "Sami",
    "Sara",
    "Søren",
    "Tomás",
    "Uma",
    "Victor",
    "Wei",
    "Yusuf",
    "Zoë",
)
_SURNAMES = (
    "Andersen",
    "Baker",
    "Becker",
    "Chen",
    "Costa",
    "Dubois",
    "Fischer",
    "García",
    "Gonzalez",
    "Hansen",
    "Ivanova",
    "Jansen",
    "Kowalski",
    "Larsen",
    "Lee",
    "Martin",
    "Meyer",
    "Müller",
    "Nakamura",
    "Nguyen",
    "Novak",
    "O'Brien",
    "Okafor",
    "Patel",
    "Petrov",
    "Rossi",
    "Santos",
    "Schmidt",
    "Silva",
    "Singh",
    "Smith",
    "Sørensen",
    "Tanaka",
    "Van der Berg",
    "Wagner",
    "Weber",
    "Williams",
    "Y\u0131lmaz",
    "Zhang",
)
_JOBS = (
    "Engineer",
    "Accountant",
    "Designer",
    "Sales Manager",
    "Nurse",
    "Technician",
    "Analyst",
    "Consultant",
)
_DEPARTMENTS = ("Engineering", "Finance", "Marketing", "Sales", "Operations", "HR", "Support", "Legal")
_CITIES = ("Amsterdam", "Berlin", "Lisbon", "London", "Oslo", "Paris", "Seattle", "Tokyo")


def _ascii(text: str) -> str:
    folded = unicodedata.normalize(
        "NFKD",
        text.replace("ł", "l").replace("Ł", "L").replace("ø", "o").replace("Ø", "O").replace("\u0131", "i"),
    )
    return re.sub(r"[^A-Za-z0-9]", "", folded.encode("ascii", "ignore").decode())


def make_sam_account_name(given: str, surname: str, taken: set[str]) -> str:
    """``given.surname`` folded to ASCII, <= 20 characters, unique within ``taken`` (case-insensitive)."""
    base = f"{_ascii(given)}.{_ascii(surname)}".lower().strip(".")[:20].rstrip(".")
    name, n = base, 1
    while name in taken:
        n += 1
        suffix = str(n)
        name = base[: 20 - len(suffix)].rstrip(".") + suffix
    return name


@dataclass
class Photo:
    """One user's photo: a rendered template, or uploaded bytes; ETag salted on every change."""

    width: int
    height: int
    content_type: str
    etag: str  # hex digest, new on every change
    template: int | None = None
    data: bytes | None = None
    variants: dict[int, bytes] = field(default_factory=dict)

    @property
    def media_etag(self) -> str:
        return f'"{self.etag[:8].upper()}"'

    @property
    def http_etag(self) -> str:
        return f'W/"{self.etag}"'


@dataclass
class User:
    props: dict[str, Any]
    mailbox: MailboxKind
    photo: Photo | None = None
    deleted: Literal["soft", "hard"] | None = None
    #: Tenant version at which each property last changed (for delta).
    versions: dict[str, int] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.props["id"])

    def graph(self, select: tuple[str, ...] | None) -> dict[str, Any]:
        names = select or DEFAULT_PROPERTIES
        out = {name: self.props.get(name) for name in names}
        out.setdefault("id", self.id)
        return out

    def admin(self) -> dict[str, Any]:
        out = {k: self.props.get(k) for k in USER_PROPERTIES}
        out["mailbox"] = self.mailbox
        out["hasPhoto"] = self.photo is not None
        out["deleted"] = self.deleted
        if self.photo:
            out["photo"] = {
                "width": self.photo.width,
                "height": self.photo.height,
                "contentType": self.photo.content_type,
                "mediaEtag": self.photo.media_etag,
            }
        return out


class Tenant:
    """Users keyed by id, with a monotonically increasing version for the delta change log."""

    def __init__(self, *, tenant_id: str, domain: str, seed: int, photo_templates: int) -> None:
        self.tenant_id = tenant_id
        self.domain = domain
        self.seed = seed
        self.templates = PhotoTemplates(seed, photo_templates)
        self.users: dict[str, User] = {}
        self.by_upn: dict[str, str] = {}
        self.sorted_ids: list[str] = []
        self.version = 1
        #: (version, id, reason) of deleted users, in version order.
        self.tombstones: list[tuple[int, str, str]] = []
        #: (version, id) of every user added or changed, in version order: a delta round's changes are
        #: found from it, not by visiting the whole tenant on each page.
        self.change_log: list[tuple[int, str]] = []
        #: Counts every change to users (guests made at generation included), so listings kept for
        #: paging know when to be rebuilt; the version does not move for every such change.
        self.edits = 0
        self._nicknames: set[str] = set()
        self._rng = random.Random(f"tenant:{seed}")
        #: ``/beta/admin/people/photoUpdateSettings``: who masters photos (``cloud`` | ``onPremises``);
        #: None when an administrator deleted the settings.
        self.photo_update_settings: dict[str, Any] | None = {"source": "cloud", "allowedRoles": []}

    # --- generation --------------------------------------------------------------------------
    def generate(self, count: int, photo_ratio: float, naming: str, guest_ratio: float = 0.0) -> None:
        """``count`` users; ``guest_ratio`` of them (never the first) are B2B guests (``_make_guest``)."""
        self._generate_members(count, photo_ratio, naming)
        picker = random.Random(f"guests:{self.seed}")  # apart: the members stay what the seed made them
        for user_id in picker.sample(self.sorted_ids, round(guest_ratio * count)):
            if user_id != self.default_user.id:
                self._make_guest(self.users[user_id])

    def _make_guest(self, user: User) -> None:
        """Turn a generated member into a B2B guest, as Entra ID holds an invited user.

        Learn, "Properties of a Microsoft Entra B2B collaboration user": the invited user's
        ``userPrincipalName`` is their address with ``@`` replaced by ``_`` and ``#EXT#@<tenant domain>``
        appended, ``userType`` is ``Guest``, and ``mail`` is their own (external) address; the guest has
        no mailbox in this tenant (Exchange Online holds a mail user for it).
        """
        external = f"{user.props['mailNickname']}@fabrikam.example"
        self.by_upn.pop(str(user.props["userPrincipalName"]).lower(), None)
        upn = f"{external.replace('@', '_')}#EXT#@{self.domain}"
        self.by_upn[upn.lower()] = user.id
        user.mailbox = "none"
        self.edits += 1
        user.props.update(userPrincipalName=upn, userType="Guest", mail=external, proxyAddresses=[f"SMTP:{external}"])

    def _generate_members(self, count: int, photo_ratio: float, naming: str) -> None:
        rng = self._rng
        for index in range(count):
            given, surname = rng.choice(_GIVEN), rng.choice(_SURNAMES)
            if index == 0:
                mailbox: MailboxKind = "cloud"  # the consented delegated user always has a mailbox
            else:
                r = rng.random()
                mailbox = "cloud" if r < 0.85 else ("on-premises" if r < 0.93 else "none")
            enabled = index == 0 or rng.random() >= 0.07
            has_photo = rng.random() < photo_ratio
            template = rng.randrange(len(self.templates.specs))
            nickname = f"u{index + 1:05d}" if naming == "numbered" else None
            user = self._new_user(rng, given, surname, mailbox, enabled, nickname, index)
            self._insert(user, version=1)
            if has_photo:
                spec = self.templates.specs[template]
                etag = hashlib.sha256(f"{self.seed}:{index}:{template}".encode()).hexdigest()
                user.photo = Photo(spec.width, spec.height, spec.content_type, etag, template=template)

    def _new_user(
        self,
        rng: random.Random,
        given: str,
        surname: str,
        mailbox: MailboxKind,
        enabled: bool,
        nickname: str | None,
        index: int,
    ) -> User:
        user_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        nickname = nickname or make_sam_account_name(given, surname, self._nicknames)
        self._nicknames.add(nickname.lower())
        upn = f"{nickname}@{self.domain}"
        mail_local = f"{_ascii(given)}.{_ascii(surname)}"
        if mail_local.lower() != nickname.split("@")[0] and mail_local.lower() in self._nicknames:
            mail_local = nickname
        mail = f"{mail_local}@{self.domain}" if mailbox != "none" else None
        created = datetime.fromtimestamp(1_600_000_000 + index * 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        props: dict[str, Any] = {
            "id": user_id,
            "businessPhones": [f"+1 425 555 {rng.randrange(10000):04d}"],
            "displayName": f"{given} {surname}",
            "givenName": given,
            "jobTitle": rng.choice(_JOBS),
            "mail": mail,
            "mobilePhone": None,
            "officeLocation": rng.choice(_CITIES),
            "preferredLanguage": "en-US",
            "surname": surname,
            "userPrincipalName": upn,
            "accountEnabled": enabled,
            "mailNickname": nickname,
            "department": rng.choice(_DEPARTMENTS),
            "companyName": "Contoso",
            "employeeId": f"E{index + 1:06d}",
            "createdDateTime": created,
            "userType": "Member",
            "usageLocation": "US",
            "proxyAddresses": [f"SMTP:{mail}"] if mail else [],
            "aboutMe": None,
        }
        return User(props=props, mailbox=mailbox)

    def _insert(self, user: User, version: int) -> None:
        self.users[user.id] = user
        self.by_upn[str(user.props["userPrincipalName"]).lower()] = user.id
        bisect.insort(self.sorted_ids, user.id)
        user.versions = {name: version for name in USER_PROPERTIES}
        self.change_log.append((version, user.id))
        self.edits += 1

    # --- lookups -----------------------------------------------------------------------------
    def find(self, key: str) -> User | None:
        """A live user by object id or UPN (case-insensitive); mail is not a key, as in Graph."""
        key = key.lower()
        user = self.users.get(key) or self.users.get(self.by_upn.get(key, ""))
        if user is None or user.deleted:
            return None
        return user

    def live_users(self) -> list[User]:
        return [u for i in self.sorted_ids if not (u := self.users[i]).deleted]

    def changed_since(self, version: int) -> set[str]:
        """Ids of the users added or changed after tenant ``version``, deleted ones included."""
        start = bisect.bisect_right(self.change_log, version, key=lambda entry: entry[0])
        return {user_id for _, user_id in self.change_log[start:]}

    def tombstones_since(self, version: int) -> list[tuple[int, str, str]]:
        """The deletions made after tenant ``version``, in version order."""
        return self.tombstones[bisect.bisect_right(self.tombstones, version, key=lambda entry: entry[0]) :]

    @property
    def default_user(self) -> User:
        for user in self.live_users():
            if user.mailbox == "cloud" and user.props["accountEnabled"]:
                return user
        raise LookupError("the tenant has no enabled user with a mailbox")

    # --- changes -----------------------------------------------------------------------------
    def _bump(self) -> int:
        self.version += 1
        return self.version

    def add_user(self, fields: dict[str, Any]) -> User:
        fields = dict(fields)
        given = str(fields.pop("givenName", "New"))
        surname = str(fields.pop("surname", "User"))
        mailbox = fields.pop("mailbox", "cloud")
        if mailbox not in MAILBOX_KINDS:
            raise ValueError(f"mailbox must be one of {MAILBOX_KINDS}")
        photo = fields.pop("photo", None)
        nickname = fields.pop("mailNickname", None)
        if nickname and nickname.lower() in self._nicknames:
            raise ValueError(f"mailNickname {nickname!r} is taken")
        user = self._new_user(
            self._rng,
            given,
            surname,
            mailbox,
            bool(fields.pop("accountEnabled", True)),
            nickname,
            len(self.users),
        )
        unknown = set(fields) - set(USER_PROPERTIES)
        if unknown:
            raise ValueError(f"unknown user properties: {', '.join(sorted(unknown))}")
        if "userPrincipalName" in fields and str(fields["userPrincipalName"]).lower() in self.by_upn:
            raise ValueError(f"userPrincipalName {fields['userPrincipalName']!r} is taken")
        if "id" in fields and str(fields["id"]).lower() in self.users:
            raise ValueError(f"id {fields['id']!r} is taken")
        user.props.update(fields)
        user.props["id"] = str(user.props["id"]).lower()
        self._insert(user, self._bump())
        if photo is not None:
            self.set_photo(user, photo, reencode=False)
        return user

    def update_user(self, user: User, fields: dict[str, Any]) -> None:
        unknown = set(fields) - (set(USER_PROPERTIES) - {"id"}) - {"mailbox"}
        if unknown:
            raise ValueError(f"unknown or read-only user properties: {', '.join(sorted(unknown))}")
        version = self._bump()
        if "mailbox" in fields:
            if fields["mailbox"] not in MAILBOX_KINDS:
                raise ValueError(f"mailbox must be one of {MAILBOX_KINDS}")
            user.mailbox = fields.pop("mailbox")
        if "userPrincipalName" in fields:
            del self.by_upn[str(user.props["userPrincipalName"]).lower()]
            self.by_upn[str(fields["userPrincipalName"]).lower()] = user.id
        for name, value in fields.items():
            if user.props.get(name) != value:
                user.props[name] = value
                user.versions[name] = version
        self.change_log.append((version, user.id))
        self.edits += 1

    def delete_user(self, user: User, permanent: bool = False) -> None:
        user.deleted = "hard" if permanent else "soft"
        self.by_upn.pop(str(user.props["userPrincipalName"]).lower(), None)
        self.tombstones.append((self._bump(), user.id, "deleted" if permanent else "changed"))
        self.edits += 1

    def set_photo(self, user: User, data: bytes, *, reencode: bool) -> Photo:
        """Store a photo. Graph uploads are re-encoded to JPEG (as Exchange does); admin ones are kept.

        Photo changes do not bump the tenant version: ``/users/delta`` never reports them.
        """
        if reencode:
            data, width, height = reencode_jpeg(data)
            content_type = "image/jpeg"
        else:
            width, height, content_type = image_dimensions(data)
        salt = uuid.uuid4().hex
        etag = hashlib.sha256(salt.encode() + data[:4096] + str(time.time_ns()).encode()).hexdigest()
        user.photo = Photo(width, height, content_type, etag, data=data)
        return user.photo

    def delete_photo(self, user: User) -> bool:
        had = user.photo is not None
        user.photo = None
        return had

    # --- photo bytes ---------------------------------------------------------------------------
    def marker(self, user: User) -> bytes:
        return f"mvsync-emulator {user.id} {user.photo.etag[:16] if user.photo else ''}".encode()
