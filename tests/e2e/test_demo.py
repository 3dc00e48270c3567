"""The README's demo runs as it is: the example configs, both Dovecots and both gateways on their
fixed loopback ports, sample mail and changes, and a standby equal to the primary at the end."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.dovecot import dovecot_missing_reason
from tests.support.environment import unavailable

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_demo_ends_with_the_standby_equal_to_the_primary():
    reason = dovecot_missing_reason()
    if reason:
        unavailable(reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILREPL_")}
    env["PYTHONPATH"] = str(REPO)
    # not pytest's private tmp_path: Dovecot's mail processes run as another user and must reach it
    base = Path(tempfile.mkdtemp(prefix="mailrepl-demo-test-"))
    base.chmod(0o755)
    try:
        run = subprocess.run([sys.executable, str(REPO / "deploy" / "demo.py"), "--base", str(base / "demo")],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "the standby equals the primary" in out
    assert "dave   unprotected: absent from the standby" in out
    assert out.count(": EQUAL") == 3, out[-4000:]
