"""``mailrepl``: run the gateways, check their configs, and administer a source gateway.

::

    mailrepl source|recovery run --config FILE
    mailrepl source|recovery check-config --config FILE
    mailrepl check-servers --config FILE [--server NAME] [--address ADDRESS] [--json]
    mailrepl protect ADDRESS... [--server NAME] [--wait [--wait-timeout S]]
    mailrepl protect --all --server NAME [--wait [--wait-timeout S]]
    mailrepl unprotect ADDRESS... [--server NAME] | --all --server NAME
    mailrepl status [ADDRESS] [--server NAME] [--json | --watch [SECONDS]]
    mailrepl cutover ADDRESS... [--server NAME] | --all --server NAME
    mailrepl failback ADDRESS... [--server NAME] | --all --server NAME [--confirm] [--abort] [--wait]
    mailrepl tokens create NAME --role viewer|operator|admin | list [--json] | revoke NAME  [--recovery]
    mailrepl audit [--limit N] [--since TIME] [--json] [--recovery]

    mailrepl certs init --dir DIR [--source ID ...] [--recovery-host NAME ...] [--source-host NAME ...]

The admin commands find the source gateway's API from ``--url``/``--token``, else from a gateway
config (``--config``: a source config, or a recovery config to ask the recovery gateway; its
``gateway.listen`` and ``admin_token``; https:// when it has
``tls_cert``, verified with ``tls_client_ca`` and presenting its own certificate when it
requires client certificates), else from ``MAILREPL_URL`` / ``MAILREPL_ADMIN_TOKEN``.
``--ca-file``, ``--client-cert`` and ``--client-key`` override the TLS files. ``cutover`` and ``failback`` talk to the recovery gateway: ``--config``
is then a recovery config (``MAILREPL_RECOVERY_URL``, default ``http://127.0.0.1:8471``), as for
``tokens`` and ``audit`` with ``--recovery``.

Exit status: 0 done; 1 the API or a gateway failed (one line on stderr); 2 a wrong setting or
usage (one line naming the key). Expected failures never print a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Mapping, Sequence

from mailrepl.shared.cli.roles import load_role
from mailrepl.shared.config.settings_common import ENV_ADMIN_TOKEN, ListenAddress
from mailrepl.shared.errors import ConfigError, MailreplError

__all__ = ["main", "build_parser", "ENV_URL"]

ENV_URL = "MAILREPL_URL"
ENV_RECOVERY_URL = "MAILREPL_RECOVERY_URL"
SITE_COMMANDS = ("cutover", "failback")
SECURITY_COMMANDS = ("tokens", "audit")
HISTORY_COMMANDS = ("restore", "history", "guard")  # recovery gateway
ROLES = ("viewer", "operator", "admin")
DEFAULT_WATCH_INTERVAL = 2.0

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


# ---------------------------------------------------------------------------- gateways


def _run_gateway(args: argparse.Namespace) -> int:
    # Optional parts of dependencies that load only because they are installed, and that a
    # gateway never uses (~8 MB): httpx's command-line client (rich, click, pygments, installed
    # for this command) and trio for httpcore's trio backend (the gateways' HTTP clients are
    # synchronous, their servers run on asyncio)
    for optional in ("httpx._main", "trio"):
        sys.modules.setdefault(optional, None)
    role = load_role(args.role)
    role.run(role.load_settings(args.config))
    return EXIT_OK


def _check_servers(args: argparse.Namespace) -> int:
    from mailrepl.shared.cli.check_servers import check_servers

    return check_servers(args.config, server=args.server, address=args.address, as_json=args.json)


def _check_config(args: argparse.Namespace) -> int:
    settings = load_role(args.role).load_settings(args.config)
    print(f"ok: {args.config}")
    print(settings.summary())
    return EXIT_OK


# ---------------------------------------------------------------------------- admin commands


def _listen_url(listen: ListenAddress, scheme: str = "http") -> str:
    """The URL a local client uses for a listen address (a wildcard address means this host)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(listen.host, listen.host)
    return f"{scheme}://{ListenAddress(host, listen.port)}"


def _api_tls(args: argparse.Namespace, environ: Mapping[str, str]):
    """The client TLS context for the admin API: flags, then the --config's TLS files; None: defaults."""
    from mailrepl.shared.protocol.peer_client import client_tls_context

    ca_file, cert, key = args.ca_file, args.client_cert, args.client_key
    if (cert is None) != (key is None):
        raise ConfigError("--client-cert and --client-key go together")
    if args.config is not None:
        role = load_role("recovery" if _recovery(args) else "source")
        tls = role.admin_tls(args.config, environ)
        if tls.mutual:  # the gateway's own certificate, signed by the CA it trusts
            ca_file = ca_file or tls.client_ca
            if cert is None:
                cert, key = tls.cert, tls.key
    if ca_file is None and cert is None:
        return None
    try:
        return client_tls_context(ca_file, cert, key)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the admin client's TLS files: {exc}") from None


def _recovery(args: argparse.Namespace) -> bool:
    """True if the command talks to the recovery gateway: cutover, failback, ``--recovery``, or
    a ``--config`` that is a recovery gateway's config (see ``config_role``)."""
    if args.command in SITE_COMMANDS + HISTORY_COMMANDS or bool(getattr(args, "recovery", False)):
        return True
    return getattr(args, "config_role", None) == "recovery"


def _detect_config_role(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Find which gateway a ``--config`` file configures, so that admin commands reach that
    gateway's API: the role the command expects if the file reads as its config, else the other
    role if it reads as that one's; if neither, the expected role's error (naming the key)."""
    if args.config is None:
        return
    expected = "recovery" if _recovery(args) else "source"
    try:
        load_role(expected).admin_endpoint(args.config, environ)
        args.config_role = expected
        return
    except ConfigError as first:
        if args.command in SITE_COMMANDS + HISTORY_COMMANDS:
            raise  # cutover, failback, history, restore and the guard exist on the recovery gateway only
        other = "source" if expected == "recovery" else "recovery"
        try:
            load_role(other).admin_endpoint(args.config, environ)
        except ConfigError:
            raise first from None
        args.config_role = other


def _api_location(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, str]:
    """(url, token) of the source gateway API: flags, then --config, then the environment."""
    url, token = args.url, args.token
    recovery = _recovery(args)
    role = load_role("recovery" if recovery else "source")
    if args.config is not None and (url is None or token is None):
        listen, admin_token = role.admin_endpoint(args.config, environ)
        url = url or _listen_url(listen, "https" if role.admin_tls(args.config, environ).enabled else "http")
        token = token or admin_token
    url = url or environ.get(ENV_RECOVERY_URL if recovery else ENV_URL) or f"http://{role.DEFAULT_LISTEN}"
    token = token or environ.get(ENV_ADMIN_TOKEN)
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url: expected an http:// or https:// URL, got {url!r}")
    if not token:
        raise ConfigError(f"no admin token: give --token or --config FILE, or set {ENV_ADMIN_TOKEN}")
    return url, token


def _admin(args: argparse.Namespace) -> int:
    from rich.console import Console

    from mailrepl.shared.cli import admin_commands
    from mailrepl.shared.cli.admin_client import AdminClient

    _detect_config_role(args, os.environ)
    url, token = _api_location(args, os.environ)
    # piped output (logs, scripts) is not cut to 80 columns; a terminal keeps its own width
    console = Console() if sys.stdout.isatty() or "COLUMNS" in os.environ else Console(width=160)
    what = "recovery gateway" if _recovery(args) else "source gateway"
    with AdminClient(url, token, what=what, tls=_api_tls(args, os.environ)) as client:
        if args.command in SECURITY_COMMANDS:
            from mailrepl.shared.cli import token_commands

            if args.command == "audit":
                return token_commands.show_audit(client, console, limit=args.limit, since=args.since,
                                                 as_json=args.json)
            if args.action == "create":
                return token_commands.create_token(client, console, name=args.name, role=args.role)
            if args.action == "revoke":
                return token_commands.revoke_token(client, console, name=args.name)
            return token_commands.list_tokens(client, console, as_json=args.json)
        if args.command in SITE_COMMANDS:
            from mailrepl.shared.cli import site_commands

            if args.command == "cutover":
                return site_commands.cutover(client, console, addresses=args.addresses, server=args.server,
                                             whole_server=args.all, play=args.play,
                                             until=args.until)
            return site_commands.failback(client, console, addresses=args.addresses, server=args.server,
                                          whole_server=args.all, confirm=args.confirm, abort=args.abort,
                                          wait=args.wait, wait_timeout=args.wait_timeout)
        if args.command in HISTORY_COMMANDS:
            from mailrepl.shared.cli import restore_command

            if args.command == "guard":
                from mailrepl.shared.cli.guard_command import guard

                action = "release" if args.release else "discard" if args.discard else None
                return guard(client, console, address=args.address, server=args.server, action=action,
                             as_json=args.json)
            if args.command == "history":
                return restore_command.show_history(client, console, address=args.address, server=args.server,
                                                    as_json=args.json)
            return restore_command.restore(
                client, console, address=args.address, server=args.server, at=args.at, export=args.export,
                export_format=args.format, to_address=args.to_mailbox, folder=args.folder, since=args.since,
                before=args.before, sender=args.sender, subject=args.subject, as_json=args.json)
        if args.command == "verify":
            from mailrepl.shared.cli.verify_command import verify

            return verify(client, console, addresses=args.addresses, server=args.server, whole=args.all,
                          as_json=args.json, timeout=args.timeout, repair=args.repair)
        if args.command == "status":
            if args.watch is not None:
                return admin_commands.watch_status(client, console, address=args.address, server=args.server,
                                                   interval=args.watch)
            return admin_commands.show_status(client, console, address=args.address, server=args.server,
                                              as_json=args.json)
        return admin_commands.set_protection(
            client, console, enabled=args.command == "protect", addresses=args.addresses, server=args.server,
            whole_server=args.all, wait=getattr(args, "wait", False), wait_timeout=getattr(args, "wait_timeout", None),
        )


# ---------------------------------------------------------------------------- parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _audit_limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"expected a number 1-1000, got {text!r}")
    return int(text)


def _api_options() -> argparse.ArgumentParser:
    api = argparse.ArgumentParser(add_help=False)
    group = api.add_argument_group("source gateway API")
    group.add_argument("--url", help=f"API URL (else from --config, else ${ENV_URL} or ${ENV_RECOVERY_URL} for cutover and "
                       "failback, else the gateway's default listen address on this host)")
    group.add_argument("--token", help=f"admin token (else from --config, else ${ENV_ADMIN_TOKEN})")
    group.add_argument("--config", type=Path, metavar="FILE",
                       help="a source or recovery gateway config: the API of that gateway, at its gateway.listen, "
                            "with its admin_token")
    group.add_argument("--ca-file", type=Path, metavar="PEM",
                       help="CA certificate(s) that verify an https:// API (else the config's tls_client_ca, "
                            "else the system's CAs)")
    group.add_argument("--client-cert", type=Path, metavar="PEM", help="client certificate for a mutual-TLS API")
    group.add_argument("--client-key", type=Path, metavar="PEM", help="its private key")
    return api


def _add_protection_parser(sub, name: str, enabled: bool, api: argparse.ArgumentParser) -> None:
    verb = "protect" if enabled else "stop protecting"
    p = sub.add_parser(name, parents=[api], help=f"{verb} mailboxes",
                       description=f"{verb.capitalize()} mailboxes on the source gateway.")
    p.add_argument("addresses", nargs="*", metavar="ADDRESS", help="mailbox address (user name on the server)")
    p.add_argument("--server", metavar="NAME", help="the server holding the addresses (needed if several list one)")
    p.add_argument("--all", action="store_true", help="every mailbox the server lists (with --server)")
    if enabled:
        p.add_argument("--wait", action="store_true",
                       help="show seeding progress until every mailbox replicates with empty queues")
        p.add_argument("--wait-timeout", type=_seconds, metavar="SECONDS",
                       help="give up waiting after SECONDS (exit 1)")
    p.set_defaults(handler=_admin, usage_error=p.error)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailrepl", description="Mailbox replication gateway.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for role, what in (("source", "source gateway (primary side)"), ("recovery", "recovery gateway (standby side)")):
        p = sub.add_parser(role, help=f"the {what}")
        actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
        for action, handler, help_text in (("run", _run_gateway, "run the gateway"),
                                           ("check-config", _check_config, "validate the config and summarize it")):
            a = actions.add_parser(action, help=help_text)
            a.add_argument("--config", type=Path, required=True, metavar="FILE", help="the gateway's TOML config")
            a.set_defaults(handler=handler, role=role)

    from mailrepl.shared.cli.certs import add_certs_parser

    add_certs_parser(sub)
    api = _api_options()
    _add_protection_parser(sub, "protect", True, api)
    _add_protection_parser(sub, "unprotect", False, api)

    p = sub.add_parser("status", parents=[api], help="show replication status",
                       description="Show every mailbox, or one in detail, as the source gateway sees it.")
    p.add_argument("address", nargs="?", metavar="ADDRESS", help="one mailbox in detail (folders, rejects)")
    p.add_argument("--server", metavar="NAME", help="the server holding ADDRESS (needed if several list it)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the API's JSON")
    out.add_argument("--watch", nargs="?", type=_seconds, const=DEFAULT_WATCH_INTERVAL, metavar="SECONDS",
                     help=f"redraw every SECONDS (default {DEFAULT_WATCH_INTERVAL:g}) until Ctrl-C")
    p.set_defaults(handler=_admin, usage_error=p.error)

    for name, text in (("cutover", "move mailboxes' users to the standby (recovery gateway)"),
                       ("failback", "bring mailboxes back to the primary (recovery gateway)")):
        p = sub.add_parser(name, parents=[api], help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("addresses", nargs="*", metavar="ADDRESS", help="mailbox address")
        p.add_argument("--server", metavar="NAME", help="the primary server (as the source gateway names it)")
        p.add_argument("--all", action="store_true", help="every replicated mailbox of --server")
        if name == "cutover":
            p.add_argument("--play", choices=("all", "until", "none"), default="all",
                           help="a lagged copy ([lag] replay_delay): play every waiting change (default), those "
                                "captured up to --until (the later ones are set aside, kept and listed), or none")
            p.add_argument("--until", type=_time, metavar="TIME", help="with --play until: ISO 8601 (UTC without a zone)")
        if name == "failback":
            p.add_argument("--confirm", action="store_true",
                           help="switch users back to the primary (after the last standby changes)")
            p.add_argument("--abort", action="store_true", help="stop a failback under way; users stay at DR")
            p.add_argument("--wait", action="store_true",
                           help="wait until the primary has every change (with --confirm: until replicating)")
            p.add_argument("--wait-timeout", type=_seconds, metavar="SECONDS", help="give up waiting (exit 1)")
        p.set_defaults(handler=_admin, usage_error=p.error)
    p = sub.add_parser("verify", parents=[api], help="compare primary and standby copies of mailboxes",
                       description="Compare the primary and standby copies of mailboxes while replication runs: "
                                   "folders, and per message its bytes (SHA-256), flags and internal date. "
                                   "Exit 0 if all are equal, 1 if any differs, 2 on error.")
    p.add_argument("addresses", nargs="*", metavar="ADDRESS", help="mailbox address")
    p.add_argument("--server", metavar="NAME", help="every protected mailbox of this server (or the server of ADDRESS)")
    p.add_argument("--all", action="store_true", help="every protected mailbox")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--repair", action="store_true",
                   help="have replication fix what differs (resync the folders); the report says what was done; "
                        "verify again afterwards")
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                   help="how long to wait, per mailbox, for changes in flight to be applied before "
                        "reporting them (default 60)")
    p.set_defaults(handler=_admin, usage_error=p.error)
    _add_history_parsers(sub, api)
    _add_security_parsers(sub, api)
    p = sub.add_parser("check-servers", help="pre-flight check of the mail servers a gateway config names",
                       description="Connect to each mail server of a source or recovery config with its service "
                                   "account and report, one line per finding, the capabilities mailrepl uses or "
                                   "misses, the account's rights, namespace and separator, settings that alter or "
                                   "refuse messages (probe messages in a scratch folder, removed afterwards), clock "
                                   "skew, and what to change. Exit status 1 if a finding is a blocker.")
    p.add_argument("--config", type=Path, required=True, metavar="FILE", help="a source or recovery gateway config")
    p.add_argument("--server", metavar="NAME", help="only this server")
    p.add_argument("--address", metavar="ADDRESS",
                   help="the mailbox the probe writes into (default: the server's first configured user)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(handler=_check_servers)
    return parser


def _time(text: str):
    from mailrepl.shared.cli.restore_command import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_history_parsers(sub, api: argparse.ArgumentParser) -> None:
    """``restore`` and ``history`` (recovery gateway; --config is a recovery config)."""
    p = sub.add_parser("restore", parents=[api], help="rebuild a mailbox as it was at a time (recovery gateway)",
                       description="Rebuild a mailbox as it was at TIME from the recovery gateway's history "
                                   "(folders, messages byte-exact, flags, internal dates): into 'Restored/<TIME>/...' "
                                   "of the mailbox itself (on the copy users are on), into another mailbox, or "
                                   "into a file. Exit 0 done, 1 failed, 2 refused.")
    p.add_argument("address", metavar="ADDRESS", help="the mailbox")
    p.add_argument("--at", type=_time, required=True, metavar="TIME",
                   help="ISO 8601, e.g. 2026-12-01T10:00 (UTC without a zone)")
    p.add_argument("--server", metavar="NAME", help="the primary server (if several hold ADDRESS)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--to-mailbox", metavar="ADDRESS", help="write into this other mailbox, folders as they were")
    where.add_argument("--export", type=Path, metavar="FILE", help="write an mbox (with FILE.manifest.json) or "
                       "a zip of .eml files with manifest.json (by FILE's suffix, or --format)")
    p.add_argument("--format", choices=("mbox", "zip"), help="the export's format")
    p.add_argument("--folder", metavar="FOLDER", help="only this folder and its subfolders")
    p.add_argument("--since", type=_time, metavar="TIME", help="only messages with an internal date from TIME on")
    p.add_argument("--before", type=_time, metavar="TIME", help="only messages with an internal date before TIME")
    p.add_argument("--sender", metavar="TEXT", help="only messages whose From holds TEXT")
    p.add_argument("--subject", metavar="TEXT", help="only messages whose Subject holds TEXT")
    p.add_argument("--json", action="store_true", help="print the job's final JSON")
    p.set_defaults(handler=_admin, usage_error=p.error)
    p = sub.add_parser("history", parents=[api], help="what each mailbox's history holds (recovery gateway)",
                       description="How far back a restore reaches and what history costs, per mailbox.")
    p.add_argument("address", nargs="?", metavar="ADDRESS", help="one mailbox, measured now")
    p.add_argument("--server", metavar="NAME", help="the primary server (if several hold ADDRESS)")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.set_defaults(handler=_admin, usage_error=p.error)
    p = sub.add_parser("guard", parents=[api], help="deletions held by the mass-delete guard (recovery gateway)",
                       description="List the mailboxes whose deletions the mass-delete guard holds; release "
                                   "them (play them on the standby) or discard them (the standby keeps the "
                                   "messages).")
    p.add_argument("address", nargs="?", metavar="ADDRESS", help="the mailbox")
    p.add_argument("--server", metavar="NAME", help="the primary server (if several hold ADDRESS)")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--release", action="store_true", help="play the held changes on the standby, in order")
    act.add_argument("--discard", action="store_true", help="drop the held deletions; play the other held changes")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.set_defaults(handler=_admin, usage_error=p.error)


def _add_security_parsers(sub, api: argparse.ArgumentParser) -> None:
    """``tokens create|list|revoke`` and ``audit`` (role admin), on either gateway."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--recovery", action="store_true",
                       help="talk to the recovery gateway (--config is then a recovery config)")
    p = sub.add_parser("tokens", help="create, list and revoke admin API tokens",
                       description="Admin API tokens with a role: viewer (status, metrics, docs), operator "
                                   "(protect, unprotect, cutover, failback, gc), admin (tokens, audit log).")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("create", parents=[api, where], help="create a token (printed once)")
    a.add_argument("name", metavar="NAME", help="the token's name (letters, digits, '.', '_', '-')")
    a.add_argument("--role", required=True, choices=ROLES, help="what the token may do")
    a = actions.add_parser("list", parents=[api, where], help="list the tokens (never their secrets)")
    a.add_argument("--json", action="store_true", help="print the API's JSON")
    a = actions.add_parser("revoke", parents=[api, where], help="refuse a token from now on")
    a.add_argument("name", metavar="NAME")
    for a in actions.choices.values():
        a.set_defaults(handler=_admin, usage_error=a.error)
    p = sub.add_parser("audit", parents=[api, where], help="show the audit log",
                       description="Who changed what, when, and how it ended (newest first), and refused calls.")
    p.add_argument("--limit", type=_audit_limit, default=50, metavar="N",
                   help="entries to show (1-1000, default 50)")
    p.add_argument("--since", metavar="TIME", help="only entries at or after TIME (ISO 8601, UTC without a zone)")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.set_defaults(handler=_admin, usage_error=p.error)


def _check_usage(args: argparse.Namespace) -> None:
    """Combinations argparse cannot express; exits 2 with the subcommand's usage."""
    if args.command == "status" and args.server and not args.address:
        args.usage_error("--server goes with an ADDRESS")
    if args.command == "guard" and (args.release or args.discard) and not args.address:
        args.usage_error("--release and --discard need an ADDRESS")
    if args.command == "restore" and args.format and args.export is None:
        args.usage_error("--format goes with --export FILE")
    if args.command == "verify":
        if args.all and args.addresses:
            args.usage_error("give either ADDRESS... or --all, not both")
        if not (args.all or args.addresses or args.server):
            args.usage_error("give at least one ADDRESS, --server NAME or --all")
        return
    if args.command not in SITE_COMMANDS and args.command not in ("protect", "unprotect"):
        return
    # the mailboxes: some addresses, or every one of a server
    if args.all and args.addresses:
        args.usage_error("give either ADDRESS... or --all, not both")
    if args.all and not args.server:
        args.usage_error("--all needs --server NAME")
    if not args.all and not args.addresses:
        args.usage_error("give at least one ADDRESS, or --all --server NAME")
    if args.command in SITE_COMMANDS:
        if args.command == "cutover" and (args.play == "until") != (args.until is not None):
            args.usage_error("--play until goes with --until TIME (and --until with it)")
        if args.command == "failback" and args.confirm and args.abort:
            args.usage_error("--confirm and --abort exclude each other")
        return
    if getattr(args, "wait_timeout", None) is not None and not args.wait:
        args.usage_error("--wait-timeout needs --wait")


# ---------------------------------------------------------------------------- entry point


def _error(message: object) -> None:
    print(f"mailrepl: error: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_usage(args)
    try:
        return args.handler(args)
    except ConfigError as exc:
        _error(exc)
        return EXIT_CONFIG
    except MailreplError as exc:
        _error(exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
