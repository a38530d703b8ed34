"""Hybrid organisations: a mailbox Graph reports as not in Exchange Online is a known state, not an error.

The facts (Microsoft's pages; see the README, "Hybrid: on-premises mailboxes"):

* Graph cannot serve anything of a mailbox that lives on Exchange Server. For such a user it answers
  404 ``MailboxNotEnabledForRESTAPI`` ("The mailbox is either inactive, soft-deleted, or is hosted
  on-premise"), or ``MailboxNotSupportedForRESTAPI``; KB 4462988 ("REST API is not yet supported for
  this mailbox") gives as the cause a mailbox "on a dedicated Microsoft Exchange Server".
  ``MailboxNotHostedInExchangeOnline`` ("hosted by an on-premise or non-Exchange server") is the other
  code clients meet for the same situation, and the one the bundled Graph emulator sends.
* In a hybrid organisation those people keep their photo in their on-premises mailbox, and the
  ``exchange-server-photos`` agent reads it over EWS. For this agent the person is therefore not a
  failure: the entry is imported with ``EXOMailboxLocation = "on-premises"`` and no Exchange Online
  photo, and the step counts it (``mailbox_on_premises``). MIM would call it a state of the object,
  not a discovery error: an error would make every hybrid run "completed-discovery-errors" forever.
* A mailbox that cannot be found at all (``ErrorNonExistentMailbox``, ``ErrorInvalidUser``: the
  address has no mailbox anywhere) stays a per-object error, ``mailbox-not-found``.

What Graph does not tell apart: its ``MailboxNotEnabledForRESTAPI`` text also covers inactive and
soft-deleted mailboxes. Such a person shows as on-premises here and, having no on-premises mailbox,
is not in the Exchange Server agent's list (``Get-Mailbox``), so no photo arrives from there either;
the HR folder remains their fallback, exactly as for anybody else without a mailbox photo.

How it is remembered between runs: the state row of an on-premises user holds no photo and the
marker :data:`ON_PREMISES_ETAG` as its version, so a delta import re-staging nothing while the
mailbox stays on-premises, and re-staging the entry (without the attribute) once Graph answers for
the mailbox again, i.e. after a move to Exchange Online.
"""

from __future__ import annotations

from typing import Any

from connector.agents.exchange_online._graph import GraphResponse
from connector.sdk import Attribute, AttributeAccess

__all__ = [
    "LOCATION_ATTRIBUTE",
    "MAILBOX_NOT_FOUND_CODES",
    "ON_PREMISES",
    "ON_PREMISES_CODES",
    "ON_PREMISES_ETAG",
    "location_attribute",
    "mailbox_location_values",
    "mailbox_on_premises",
    "same_mailbox_location",
]

#: Graph ``error.code`` values (lower case) meaning "this mailbox is not in Exchange Online".
ON_PREMISES_CODES = frozenset(
    {"mailboxnotenabledforrestapi", "mailboxnotsupportedforrestapi", "mailboxnothostedinexchangeonline"}
)
#: ``error.code`` values (lower case) meaning "no mailbox by that name anywhere".
MAILBOX_NOT_FOUND_CODES = frozenset({"errornonexistentmailbox", "errorinvaliduser"})
LOCATION_ATTRIBUTE = "EXOMailboxLocation"
ON_PREMISES = "on-premises"
#: The version the state row keeps for an on-premises mailbox (Graph gives it no photo and no ETag).
ON_PREMISES_ETAG = "mailbox:on-premises"


def mailbox_on_premises(resp: GraphResponse) -> bool:
    """Whether Graph's answer says the mailbox is not in Exchange Online (on-premises in a hybrid)."""
    return resp.status == 404 and resp.error_code.lower() in ON_PREMISES_CODES


def location_attribute() -> Attribute:
    return Attribute(
        name=LOCATION_ATTRIBUTE,
        access=AttributeAccess.IMPORT_ONLY,
        description="'on-premises' when Graph says the mailbox is not in Exchange Online (hybrid); absent otherwise",
    )


def same_mailbox_location(stored_etag: str | None, new_etag: str | None) -> bool:
    """Whether a stored version and a new one put the mailbox in the same place (both on-premises or not)."""
    return (stored_etag == ON_PREMISES_ETAG) == (new_etag == ON_PREMISES_ETAG)


def mailbox_location_values(etag: str | None) -> dict[str, Any]:
    """The location attribute for an outcome's version when it is on-premises; empty otherwise."""
    return {LOCATION_ATTRIBUTE: ON_PREMISES} if etag == ON_PREMISES_ETAG else {}
