"""Settings of EWS servers (kind = "ews"): defaults, the factory, and one-line errors naming the key."""
from __future__ import annotations

import pytest

from mailrepl.gateway.settings import load_source_settings
from mailrepl.recovery.settings import load_recovery_settings
from mailrepl.shared.adapters.factory import make_adapter
from mailrepl.shared.config.settings_common import EwsServerSettings, describe_server
from tests.unit.test_settings import RECOVERY, config_error, edit, write

SOURCE = """\
[gateway]
id = "hq"
admin_token = "admin-t-Xq7Lm2Np9Rs4Tv8Wy3Zb6Cd"
plaintext = true

[peer]
url = "http://127.0.0.1:8471"
token = "peer-t-Gh5Jk8Lm1Nq4Rs7Tu0Vw3Xy"

[[servers]]
name = "exchange"
kind = "ews"
endpoint = "https://mail.example.org/EWS/Exchange.asmx"
service_user = "EXAMPLE\\\\svc-repl"
service_password = "pw"
users = ["alice@example.org", "bob@example.org"]
"""


def test_ews_server_defaults(tmp_path):
    [srv] = load_source_settings(write(tmp_path, SOURCE), {}).servers
    assert isinstance(srv, EwsServerSettings)
    assert (srv.kind, srv.endpoint, srv.autodiscover) == ("ews", "https://mail.example.org/EWS/Exchange.asmx", False)
    assert (srv.auth, srv.access, srv.service_user, srv.service_password) == ("basic", "impersonation", "EXAMPLE\\svc-repl", "pw")
    assert (srv.timeout, srv.retry_max_wait, srv.connections) == (120.0, 60.0, 2)
    assert srv.users == ("alice@example.org", "bob@example.org")
    assert "pw" not in repr(srv) and "pw" not in describe_server(srv)
    assert describe_server(srv) == ('server "exchange" (ews): https://mail.example.org/EWS/Exchange.asmx, '
                                    'basic as "EXAMPLE\\svc-repl", impersonation, 2 users')


def test_ews_password_from_the_environment_and_all_options(tmp_path):
    text = edit(SOURCE, 'service_password = "pw"\n', 'auth = "oauth2"\nclient_id = "app-id"\ntenant_id = "tenant"\n'
                'access = "delegate"\ntimeout = 30\nretry_max_wait = 5\nmax_connections = 8\n')
    [srv] = load_source_settings(write(tmp_path, text), {"MAILREPL_SERVER_EXCHANGE_PASSWORD": "from-env-Lm7No0Pq3Rs6Tu9Vw2Xy5Za8"}).servers
    assert (srv.auth, srv.client_id, srv.tenant_id, srv.access) == ("oauth2", "app-id", "tenant", "delegate")
    assert (srv.service_password, srv.timeout, srv.retry_max_wait, srv.connections) == ("from-env-Lm7No0Pq3Rs6Tu9Vw2Xy5Za8", 30.0, 5.0, 8)


def test_ews_autodiscover_instead_of_an_endpoint(tmp_path):
    text = edit(SOURCE, 'endpoint = "https://mail.example.org/EWS/Exchange.asmx"', "autodiscover = true")
    [srv] = load_source_settings(write(tmp_path, text), {}).servers
    assert (srv.endpoint, srv.autodiscover) == (None, True)
    assert "autodiscover" in describe_server(srv)


def test_ews_standby_server_on_the_recovery_side(tmp_path):
    text = RECOVERY.split("[[servers]]")[0] + SOURCE[SOURCE.index("[[servers]]"):]
    [srv] = load_recovery_settings(write(tmp_path, text), {}).servers
    assert srv.kind == "ews" and srv.name == "exchange"


def test_factory_builds_the_ews_adapter(tmp_path):
    [srv] = load_source_settings(write(tmp_path, SOURCE), {}).servers
    adapter = make_adapter(srv)
    assert type(adapter).__name__ == "EwsAdapter" and adapter.name == "exchange"
    ep = adapter.endpoint
    assert (ep.service_endpoint, ep.service_user, ep.service_password, ep.auth, ep.access, ep.max_connections) == (
        "https://mail.example.org/EWS/Exchange.asmx", "EXAMPLE\\svc-repl", "pw", "basic", "impersonation", 2)
    assert adapter.list_mailboxes() == ["alice@example.org", "bob@example.org"]


EWS_ERRORS = [
    ('endpoint = "https://mail.example.org/EWS/Exchange.asmx"\n', "",
     "servers[0].endpoint: missing (give the EWS URL, or set autodiscover = true)"),
    ('endpoint = "https://mail.example.org/EWS/Exchange.asmx"', 'endpoint = "mail.example.org"',
     'servers[0].endpoint: expected an "http://" or "https://" URL, got "mail.example.org"'),
    ('kind = "ews"', 'kind = "ews"\nautodiscover = true',
     "servers[0].autodiscover: set either endpoint or autodiscover = true, not both"),
    ('kind = "ews"', 'kind = "ews"\nauth = "kerberos"',
     'servers[0].auth: expected one of "basic", "ntlm", "oauth2", got "kerberos"'),
    ('kind = "ews"', 'kind = "ews"\naccess = "admin"',
     'servers[0].access: expected one of "impersonation", "delegate", got "admin"'),
    ('kind = "ews"', 'kind = "ews"\nauth = "oauth2"\ntenant_id = "t"',
     'servers[0].client_id: missing (auth = "oauth2" needs client_id and tenant_id)'),
    ('kind = "ews"', 'kind = "ews"\nauth = "oauth2"\nclient_id = "c"',
     'servers[0].tenant_id: missing (auth = "oauth2" needs client_id and tenant_id)'),
    ('kind = "ews"', 'kind = "ews"\ntimeout = 0', "servers[0].timeout: expected a number of seconds > 0, got 0"),
    ('kind = "ews"', 'kind = "ews"\nretry_max_wait = "1m"',
     'servers[0].retry_max_wait: expected a number of seconds > 0, got "1m"'),
    ('kind = "ews"', 'kind = "ews"\nmax_connections = -1',
     "servers[0].max_connections: expected an integer 0-256, got -1"),
    ('kind = "ews"', 'kind = "ews"\nhost = "mail.example.org"', "servers[0].host: unknown key"),
    ('kind = "ews"', 'kind = "ews"\nendpiont = "x"', 'servers[0].endpiont: unknown key (did you mean "endpoint"?)'),
    ('service_user = "EXAMPLE\\\\svc-repl"\n', "", "servers[0].service_user: missing"),
    ('service_password = "pw"\n', "", "servers[0].service_password: missing (set it here or in the environment "
                                      "variable MAILREPL_SERVER_EXCHANGE_PASSWORD)"),
    ('users = ["alice@example.org", "bob@example.org"]', 'users = ["alice@example.org", "b ob"]',
     'servers[0].users[1]: expected an address without spaces, got "b ob"'),
]


@pytest.mark.parametrize("old, new, expected", EWS_ERRORS, ids=[e[2].split(":")[1].strip() + str(i) for i, e in enumerate(EWS_ERRORS)])
def test_ews_errors_name_the_key(tmp_path, old, new, expected):
    path = write(tmp_path, edit(SOURCE, old, new))
    assert config_error(load_source_settings, path).startswith(expected)
