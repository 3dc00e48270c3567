"""A private nginx mail proxy for tests, rendered from ``deploy/nginx/mailproxy.conf.in``.

Runs ``nginx -p BASE -c BASE/nginx.conf -e BASE/logs/error.log`` (Debian's nginx-light with the
dynamic mail module); the system nginx is never touched.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.dovecot import render_config
from tests.support.net import free_port, wait_for_greeting

__all__ = ["NginxMailProxy", "nginx_missing_reason"]

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "nginx" / "mailproxy.conf.in"
MAIL_MODULE = Path("/usr/lib/nginx/modules/ngx_mail_module.so")


def nginx_missing_reason() -> str | None:
    if shutil.which("nginx") is None:
        return "nginx is not installed (apt-get install nginx-light libnginx-mod-mail)"
    if not MAIL_MODULE.exists():
        return "nginx's mail module is not installed (apt-get install libnginx-mod-mail)"
    return None


class NginxMailProxy:
    def __init__(self, auth_http: str, *, key: str = "proxy-key") -> None:
        self.base = Path(tempfile.mkdtemp(prefix="mailrepl-nginx-"))
        (self.base / "logs").mkdir()
        (self.base / "run").mkdir()
        self.port = free_port()
        self.key = key
        text = render_config(TEMPLATE.read_text(), {
            "PREFIX": str(self.base), "IMAP_LISTEN": f"127.0.0.1:{self.port}", "AUTH_HTTP": auth_http,
            "AUTH_KEY": key,
        })
        (self.base / "nginx.conf").write_text(text)

    def _cmd(self, *extra: str) -> list[str]:
        return ["nginx", "-p", str(self.base), "-c", str(self.base / "nginx.conf"),
                "-e", str(self.base / "logs" / "error.log"), *extra]

    def start(self) -> None:
        subprocess.run(self._cmd("-t"), check=True, capture_output=True)
        subprocess.run(self._cmd(), check=True, capture_output=True)
        if not wait_for_greeting(self.port, b"* OK", 20):
            raise RuntimeError(f"nginx did not greet on {self.port}: {self.log_tail()}")

    def pid(self) -> int | None:
        try:
            return int((self.base / "run" / "nginx.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGQUIT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.base / "logs" / "error.log").read_text().splitlines()[-lines:])
        except OSError:
            return ""
