"""schemathesis against both gateways' OpenAPI, with valid tokens: no 5xx, and every answer is
one the schema documents (status code, content type, body schema).

The apps are the real ones (``RecoveryGateway.app()``, ``SourceGateway.app()``) built from config
files and called in-process (ASGI); their workers are not started. Ingest routes get the ingest
token, every other route the admin token.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from mailrepl.gateway.app import SourceGateway
from mailrepl.gateway.settings import load_source_settings
from mailrepl.recovery.app import RecoveryGateway
from mailrepl.recovery.settings import load_recovery_settings

ADMIN, INGEST = "admin-Rk4Tz8Wq1Ny5Mp9Lc3Hv7Bx2", "ingest-Gf6Dj0Ks4Aq8Ze2Xw7Cv1Bn5"


def no_server_fault(ctx, response, case) -> None:
    """No 5xx of our own: the only one allowed is 503 with Retry-After (a mail server this test
    names on a closed port is unreachable: a temporary condition the API documents)."""
    if response.status_code == 503 and response.headers.get("retry-after"):
        return None
    if response.status_code >= 500:
        raise AssertionError(f"{case.method} {case.path}: {response.status_code} {response.text[:300]}")
    return None


CHECKS = (no_server_fault, status_code_conformance, content_type_conformance, response_schema_conformance)
EXAMPLES = settings(max_examples=25, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))
_TMP = Path(tempfile.mkdtemp(prefix="mailrepl-schemathesis-"))
_SERVER = """
[[servers]]
name = "{name}"
host = "127.0.0.1"
port = 9
tls = "none"
service_user = "master"
service_password = "pw"
users = ["alice", "bob"]
"""


def _recovery_app():
    cfg = _TMP / "recovery.toml"
    cfg.write_text(f"""
[gateway]
id = "dr"
state_url = "sqlite:///{_TMP}/r.sqlite"
admin_token = "{ADMIN}"
plaintext = true
docs_open = true  # the schema is loaded without a token
blob_dir = "{_TMP}/blobs"

[[sources]]
id = "hq"
token = "{INGEST}"
servers = ["primary"]

[failover]
redirect_key = "redirect-Xn4Bv7Cm1Lk8Jh5Gf2Ds9Aq"
""" + _SERVER.format(name="standby"))
    cfg.chmod(0o600)
    return RecoveryGateway(load_recovery_settings(cfg)).app()


def _source_app():
    cfg = _TMP / "source.toml"
    cfg.write_text(f"""
[gateway]
id = "hq"
state_url = "sqlite:///{_TMP}/s.sqlite"
admin_token = "{ADMIN}"
plaintext = true
docs_open = true  # the schema is loaded without a token

[peer]
url = "http://127.0.0.1:9"
token = "{INGEST}"
""" + _SERVER.format(name="primary"))
    cfg.chmod(0o600)
    return SourceGateway(load_source_settings(cfg)).app()


recovery_schema = schemathesis.openapi.from_asgi("/openapi.json", _recovery_app())
source_schema = schemathesis.openapi.from_asgi("/openapi.json", _source_app())


def _token(case) -> dict:
    token = INGEST if case.path.startswith("/api/v1/ingest") else ADMIN
    return {"Authorization": f"Bearer {token}"}


@recovery_schema.parametrize()
@EXAMPLES
def test_recovery_gateway_api(case):
    case.call_and_validate(headers=_token(case), checks=CHECKS)


@source_schema.parametrize()
@EXAMPLES
def test_source_gateway_api(case):
    case.call_and_validate(headers=_token(case), checks=CHECKS)


def test_refusals_are_documented():
    for schema in (recovery_schema.raw_schema, source_schema.raw_schema):
        ops = [op for path, item in schema["paths"].items() if path.startswith("/api/v1")
               for op in item.values()]
        assert ops
        for op in ops:
            assert {"401", "403", "413", "415", "422", "429"} <= set(op["responses"]), op.get("operationId")
