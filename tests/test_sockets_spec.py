"""The held-socket and rollout fields of a job file, without sockets or processes: forms,
defaults, bounds, the rules across fields, and what a change of them restarts."""
import pytest

from taskmasterd.jobfiles.jobfile import JobFileError, parse_job
from taskmasterd.jobfiles.sockets_spec import DEFAULT_BACKLOG, SOCKET_ACTIVATION, SocketSpec, held_address

SRC = "jobs/web.tm.json"


def parse(fields: str):
    return parse_job("web", ('{"cmd": "x"' + (", " + fields if fields else "") + "}").encode(), SRC)


def problems(fields: str) -> list[str]:
    with pytest.raises(JobFileError) as err:
        parse(fields)
    return err.value.problems


def test_a_plain_job_holds_nothing_and_restarts_all_at_once():
    spec = parse("")
    assert spec.sockets == () and not spec.reuseport and not spec.rolling and spec.max_unavailable == 1
    assert spec.autostart is True and spec.starts_on_load


@pytest.mark.parametrize("listen, normalized, family, host, port", [
    ("127.0.0.1:8080", "127.0.0.1:8080", "inet", "127.0.0.1", 8080),
    ("0.0.0.0:80", "0.0.0.0:80", "inet", "0.0.0.0", 80),
    ("[::1]:8080", "[::1]:8080", "inet6", "::1", 8080),
    ("[0:0::1]:8080", "[::1]:8080", "inet6", "::1", 8080),
    ("[::]:443", "[::]:443", "inet6", "::", 443),
    ("unix:/run/app/app.sock", "unix:/run/app/app.sock", "unix", "/run/app/app.sock", 0),
    ("unix:/run/app//x/../app.sock", "unix:/run/app/app.sock", "unix", "/run/app/app.sock", 0),
])
def test_listen_forms(listen, normalized, family, host, port):
    (sock,) = parse(f'"sockets": [{{"listen": "{listen}"}}]').sockets
    assert (sock.listen, sock.family, sock.host, sock.port) == (normalized, family, host, port)
    assert sock.name is None and sock.backlog == DEFAULT_BACKLOG and sock.mode == 0o660


def test_every_setting_of_an_entry():
    a, b = parse('"sockets": [{"listen": "127.0.0.1:8080", "name": "http", "backlog": 16},'
                 '{"listen": "unix:/run/a.sock", "mode": "0600", "owner": "www", "group": 33}]').sockets
    assert a == SocketSpec("127.0.0.1:8080", "inet", "127.0.0.1", 8080, name="http", backlog=16)
    assert (b.mode, b.owner, b.group) == (0o600, "www", "33")


@pytest.mark.parametrize("value, words", [
    ('[]', "must be a non-empty list"),
    ('{"listen": "127.0.0.1:80"}', "must be a non-empty list"),
    ('["127.0.0.1:80"]', "entry 0: every entry must be an object"),
    ('[{"name": "x"}]', 'entry 0: an entry needs "listen"'),
    ('[{"listen": "127.0.0.1:80", "port": 1}]', 'entry 0: unknown key "port"'),
    ('[{"listen": "localhost:80"}]', "must have an IP address (a name is not resolved"),
    ('[{"listen": "::1:80"}]', "must have an IP address"),
    ('[{"listen": "127.0.0.1:0"}]', "must have a port 1…65535"),
    ('[{"listen": "127.0.0.1:65536"}]', "must have a port 1…65535"),
    ('[{"listen": "127.0.0.1"}]', 'must be "HOST:PORT"'),
    ('[{"listen": "unix:run/a.sock"}]', "absolute path"),
    ('[{"listen": "unix:@abstract"}]', "abstract socket is not supported"),
    ('[{"listen": "unix:/"}]', "must name a socket file"),
    ('[{"listen": "unix:/run/' + "a" * 81 + '"}]', "at most 80 bytes"),
    ('[{"listen": "127.0.0.1:80", "name": "a:b"}]', 'without ":"'),
    ('[{"listen": "127.0.0.1:80", "name": ""}]', '"name" must be'),
    ('[{"listen": "127.0.0.1:80", "backlog": 0}]', '"backlog" must be an integer 1…65535'),
    ('[{"listen": "127.0.0.1:80", "mode": "0600"}]', '"mode" is for a unix socket only'),
    ('[{"listen": "unix:/a.sock", "mode": "rw"}]', '"mode" must be an octal string'),
    ('[{"listen": "unix:/a.sock", "owner": "-x"}]', '"owner" must be a name or a numeric id'),
    ('[{"listen": "127.0.0.1:80"}, {"listen": "127.0.0.1:80"}]', "lists 127.0.0.1:80 twice"),
])
def test_bad_sockets_name_the_file_the_field_and_the_problem(value, words):
    (message,) = problems(f'"sockets": {value}')
    assert message.startswith(f'{SRC}: field "sockets": ') and words in message, message


def test_autostart_socket_needs_sockets_and_reuseport_tcp_sockets():
    assert parse('"sockets": [{"listen": "127.0.0.1:8080"}], "autostart": "socket"').autostart == SOCKET_ACTIVATION
    assert not parse('"sockets": [{"listen": "127.0.0.1:8080"}], "autostart": "socket"').starts_on_load
    assert problems('"autostart": "socket"') == [
        f'{SRC}: field "autostart": "socket" needs "sockets" (it starts at their first connection)']
    assert 'must be true, false or "socket", got "yes"' in problems('"autostart": "yes"')[0]
    assert problems('"reuseport": true') == [f'{SRC}: field "reuseport": needs "sockets"']
    assert "is for TCP sockets only" in problems('"reuseport": true, "sockets": [{"listen": "unix:/a.sock"}]')[0]
    assert parse('"reuseport": true, "sockets": [{"listen": "127.0.0.1:8080"}]').reuseport


def test_a_health_check_on_a_held_address_is_refused():
    held = '"sockets": [{"listen": "0.0.0.0:8080"}], '
    (message,) = problems(held + '"healthcheck": {"http": "http://127.0.0.1:8080/health"}')
    assert "reaches the held socket 0.0.0.0:8080" in message and '"ready": "notify"' in message
    assert problems(held + '"healthcheck": {"tcp": "localhost:8080"}')
    parse(held + '"healthcheck": {"http": "http://127.0.0.1:9090/health"}')  # an admin port of its own
    parse('"sockets": [{"listen": "127.0.0.2:8080"}], "healthcheck": {"tcp": "127.0.0.1:8080"}')
    assert held_address((SocketSpec("[::]:80", "inet6", "::", 80),), "::1", 80) == "[::]:80"


def test_rolling_fields():
    spec = parse('"rolling": true, "max_unavailable": 2')
    assert spec.rolling and spec.max_unavailable == 2
    assert "must be an integer 1…1024" in problems('"max_unavailable": 0')[0]
    assert "must be true or false" in problems('"rolling": 1')[0]
