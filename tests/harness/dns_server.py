"""A small authoritative DNS server on a loopback UDP port, for the AD agent's DC-locator tests.

Why a real one: the agent's resolver (dnspython) then does what it does against any DNS server: it
sends a query over UDP, waits at most ``dns_timeout``, and reads NXDOMAIN, an empty answer or records.
The zone is a dict of ``(name, type)`` to record texts in master-file syntax (``"0 100 389 dc1.x.test."``
for SRV); a name the dict has under another type answers NOERROR with no records, any other NXDOMAIN.
``silent=True`` plays a DNS server that receives queries and never answers.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["DnsServer", "dns_server"]


@dataclass
class DnsServer:
    """The running server: its ``address:port`` (for ``dns_servers``) and the questions it received."""

    host: str
    port: int
    #: ``(name, type)`` of each query received, lower-case names without the final dot, in order.
    asked: list[tuple[str, str]] = field(default_factory=list)
    #: Set at each query received (a test waits on it instead of sleeping).
    queried: threading.Event = field(default_factory=threading.Event)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _answer(query: dns.message.Message, zone: dict[tuple[str, str], list[str]], glue: bool) -> dns.message.Message:
    """The response to ``query`` from ``zone`` (authoritative: NXDOMAIN for a name it does not have), with
    ``glue`` the A records of SRV targets in the additional section."""
    response = dns.message.make_response(query)
    question = query.question[0]
    name = question.name.to_text(omit_final_dot=True).lower()
    kind = dns.rdatatype.to_text(question.rdtype)
    records = zone.get((name, kind))
    if records:
        response.answer.append(dns.rrset.from_text_list(question.name, 300, dns.rdataclass.IN, kind, records))
    if records and kind == "SRV" and glue:  # the targets' addresses along, as AD's DNS servers send them
        for target in {record.split()[-1].rstrip(".").lower() for record in records}:
            if (target, "A") in zone:
                response.additional.append(dns.rrset.from_text_list(target + ".", 300, "IN", "A", zone[(target, "A")]))
    elif not any(known == name for known, _ in zone):
        response.set_rcode(dns.rcode.NXDOMAIN)
    return response


def _serve(
    sock: socket.socket, server: DnsServer, zone: dict[tuple[str, str], list[str]], stop: threading.Event, **how: bool
) -> None:
    """Answer queries on ``sock`` until ``stop`` is set (checked between receive timeouts)."""
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data, client = sock.recvfrom(4096)
        except TimeoutError:
            continue
        query = dns.message.from_wire(data)
        question = query.question[0]
        server.asked.append(
            (question.name.to_text(omit_final_dot=True).lower(), dns.rdatatype.to_text(question.rdtype))
        )
        server.queried.set()
        if not how["silent"]:
            sock.sendto(_answer(query, zone, how["glue"]).to_wire(), client)


@contextlib.contextmanager
def dns_server(
    zone: dict[tuple[str, str], list[str]], *, silent: bool = False, glue: bool = False, host: str = "127.0.0.1"
) -> Iterator[DnsServer]:
    """A DNS server for ``zone`` on ``host`` (a free UDP port) while the ``with`` lasts; ``glue``: SRV answers
    carry their targets' A records (AD's DNS does; the agent then asks no A query)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    server = DnsServer(host, sock.getsockname()[1])
    lowered = {(name.rstrip(".").lower(), kind): records for (name, kind), records in zone.items()}
    stop = threading.Event()
    how = {"silent": silent, "glue": glue}
    thread = threading.Thread(target=_serve, args=(sock, server, lowered, stop), kwargs=how, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join()
        sock.close()
