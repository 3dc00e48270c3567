"""Login redirect for nginx's mail proxy (``auth_http``): each user reaches the server that is
active for their mailbox, so clients keep one address through cutover and failback.

nginx asks with ``Auth-User``, ``Auth-Pass``, ``Auth-Protocol`` (and ``Auth-Method``, client
address...) and expects ``Auth-Status: OK`` with ``Auth-Server`` (an IP address) and
``Auth-Port``, or another ``Auth-Status`` text (shown to the client) with ``Auth-Wait``.

Credentials are passed through: nginx logs in to the chosen server with the user's own
credentials and the server decides (a wrong password is refused there and relayed to the
client). Nothing of them is kept here. A login ``user*master`` (Dovecot master-user syntax) is
routed like ``user``.

Which server: *replicating* and *switching-back* mailboxes are served by the primary,
*active-at-dr* and *failing-back* by the standby; while a mailbox is *cutting-over* logins are
asked to wait a moment. Mailboxes not replicated here go to the only primary, if there is one.

User names are matched as the mail servers match them: case-insensitively unless configured
otherwise (``[failover] redirect_case_sensitive``), so "ALICE" reaches the server where alice's
mailbox is active. An exact match wins over one that differs only in case.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Callable, Mapping

from sqlalchemy import func, select

from mailrepl.shared.config.settings_common import ServerSettings
from mailrepl.shared.site_state import SiteState, active_site
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import Replica

__all__ = ["Redirect", "Answer"]

POP3_PORT = 110
RETRY_WAIT = 2


@dataclass(frozen=True)
class Answer:
    headers: dict[str, str]

    @property
    def ok(self) -> bool:
        return self.headers.get("Auth-Status") == "OK"


class Redirect:
    def __init__(self, store: Store, primaries: Mapping[str, ServerSettings], standbys: Mapping[str, ServerSettings],
                 route: Callable[[str], str | None], *, case_sensitive: bool = False) -> None:
        self.store = store
        self.case_sensitive = case_sensitive
        self.primaries = primaries
        self.standbys = standbys
        self.route = route  # primary server name -> standby server name

    def answer(self, user: str, protocol: str) -> Answer:
        address = user.split("*", 1)[0].strip()
        if not address:
            return _refuse("Invalid login or password")
        with self.store.read() as s:
            if self.case_sensitive:
                reps = list(s.scalars(select(Replica).where(Replica.address == address).order_by(Replica.id)))
            else:
                reps = list(s.scalars(select(Replica).where(func.lower(Replica.address) == address.lower())
                                      .order_by(Replica.id)))
                reps.sort(key=lambda r: r.address != address)  # an exact match first
        if not reps:
            if len(self.primaries) == 1:
                return self._to(next(iter(self.primaries.values())), protocol)
            return _refuse("Invalid login or password")
        rep = reps[0]
        if rep.site_state == SiteState.CUTTING_OVER.value:
            return Answer({"Auth-Status": "Mailbox is being moved, try again in a moment",
                           "Auth-Wait": str(RETRY_WAIT)})
        if active_site(rep.site_state) == "dr":
            server = self.standbys.get(rep.target)
        else:
            server = self.primaries.get(rep.server)
        if server is None:
            return Answer({"Auth-Status": "Mail server not configured, try again later", "Auth-Wait": str(RETRY_WAIT)})
        return self._to(server, protocol)

    @staticmethod
    def _to(server: ServerSettings, protocol: str) -> Answer:
        try:
            ip = socket.getaddrinfo(server.host, None, proto=socket.IPPROTO_TCP)[0][4][0]
        except OSError:
            return Answer({"Auth-Status": "Mail server unreachable, try again later", "Auth-Wait": str(RETRY_WAIT)})
        port = server.port if protocol.lower() != "pop3" else POP3_PORT
        return Answer({"Auth-Status": "OK", "Auth-Server": ip, "Auth-Port": str(port)})


def _refuse(text: str) -> Answer:
    return Answer({"Auth-Status": text, "Auth-Wait": "1"})
