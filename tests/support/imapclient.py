"""IMAP logins used by the tests: as a user, and as a master user acting for a user.

The master login uses SASL PLAIN with an authorization identity (authzid = the user, authcid =
the service account), the same delegated access the gateways use, so it works against any
server the gateways support (Dovecot master users, Cyrus admins), not only Dovecot's
``user*master`` LOGIN convention.
"""
from __future__ import annotations

import imaplib

__all__ = ["login_as_master", "login_as_user"]


def login_as_user(host: str, port: int, user: str, password: str, timeout: float = 60) -> imaplib.IMAP4:
    conn = imaplib.IMAP4(host, port, timeout=timeout)
    try:
        conn.login(user, password)
    except BaseException:
        conn.shutdown()
        raise
    return conn


def login_as_master(host: str, port: int, user: str, master_user: str, master_password: str,
                    timeout: float = 60) -> imaplib.IMAP4:
    conn = imaplib.IMAP4(host, port, timeout=timeout)
    token = f"{user}\0{master_user}\0{master_password}".encode()
    try:
        conn.authenticate("PLAIN", lambda _challenge: token)
    except BaseException:
        conn.shutdown()
        raise
    return conn
