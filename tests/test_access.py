"""The pure parts of access control: the policy, the refusal throttle, the HTTP sniff, and the
names of the configuration resolved through NSS."""
from __future__ import annotations

import os

import pytest

from taskmasterd.control.access import AccessPolicy, PeerAccount, RefusalThrottle, parse_networks
from taskmasterd.control.accounts import account, group_id, resolve_policy, user_ids
from taskmasterd.control.http_guard import starts_like_http
from taskmasterd.control.peercred import Peer

DAEMON = 1000
POLICY = AccessPolicy(DAEMON, users=frozenset({2000}), groups=frozenset({50, 60}),
                      remote=parse_networks(["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]))


@pytest.mark.parametrize("uid", [0, DAEMON, 2000])
def test_root_the_daemons_uid_and_listed_users_need_no_account(uid: int) -> None:
    peer = Peer(uid, "127.0.0.1")
    assert not POLICY.needs_account(peer)
    assert POLICY.decide(peer) is None


def test_a_member_of_a_control_group_by_primary_or_supplementary_group_is_admitted() -> None:
    peer = Peer(3000)
    assert POLICY.needs_account(peer)
    assert POLICY.decide(peer, PeerAccount(3000, "carol", frozenset({60}))) is None
    assert POLICY.decide(peer, PeerAccount(3000, "carol", frozenset({7, 50}))) is None


def test_anyone_else_is_refused_with_uid_and_name() -> None:
    assert POLICY.decide(Peer(65534), PeerAccount(65534, "nobody", frozenset({65534}))) == \
        "permission denied: uid 65534 (nobody) may not control this daemon"
    assert POLICY.decide(Peer(4242), PeerAccount(4242, None)) == \
        "permission denied: uid 4242 (unknown user) may not control this daemon"


def test_a_local_peer_is_judged_by_uid_whatever_address_it_used() -> None:
    assert POLICY.decide(Peer(65534, "192.0.2.9"), PeerAccount(65534, "nobody")) is not None
    assert POLICY.decide(Peer(0, "203.0.113.1")) is None


def test_an_unidentified_local_peer_is_refused() -> None:
    """Through a public address of this host inside allow_remote too: a local process that closed
    before it was looked at cannot pass for a host elsewhere."""
    for address in (None, "127.0.0.1", "127.9.9.9", "::1", "192.0.2.44"):
        refusal = POLICY.decide(Peer(None, address))
        assert refusal is not None and refusal.startswith("permission denied: the kernel cannot tell")


def test_peers_elsewhere_only_from_allow_remote() -> None:
    for inside in ("192.0.2.44", "2001:db8::5", "198.51.100.7"):
        assert POLICY.decide(Peer(None, inside, elsewhere=True)) is None
    for outside in ("192.0.3.1", "2001:db9::1", "198.51.100.8", "10.0.0.1"):
        assert POLICY.decide(Peer(None, outside, elsewhere=True)) == \
            f"permission denied: {outside} is not on this host and not in allow_remote"
    assert AccessPolicy(DAEMON).decide(Peer(None, "192.0.2.44", elsewhere=True)) is not None  # none by default


def test_bad_networks_are_named() -> None:
    with pytest.raises(ValueError, match="'10.0.0.0/33'"):
        parse_networks(["10.0.0.0/8", "10.0.0.0/33"])


def test_refusals_are_logged_once_per_peer_per_interval() -> None:
    throttle = RefusalThrottle(interval=60, remembered=3)
    assert throttle.should_log(65534, 0.0)
    assert not throttle.should_log(65534, 30.0)
    assert throttle.should_log(1001, 30.0)
    assert throttle.should_log(65534, 60.0)
    assert throttle.should_log("192.0.2.1", 61.0)
    assert not throttle.should_log("192.0.2.2", 62.0)  # three remembered and still fresh: quiet
    assert throttle.should_log("192.0.2.2", 91.0)  # 1001's minute is over: room again


@pytest.mark.parametrize("opening", [
    b"GET / HTTP/1.1\r\n", b"POST /x HTTP/1.1", b"PUT ", b"HEAD /", b"OPTIONS * HTTP/1.1", b"CONNECT a:1",
    b"DELETE /", b"PATCH /", b"TRACE /", b"PROPFIND /", b"M-SEARCH * HTTP/1.1", b"\r\nPOST / HTTP/1.1",
    # methods are case-sensitive in HTTP, but servers and browsers' fetch() send other cases too
    b"post / HTTP/1.1", b"get / HTTP/1.1", b"Patch /x", b"delete http://a/", b"propfind *", b"\npost  /",
])
def test_http_request_lines_are_recognised(opening: bytes) -> None:
    assert starts_like_http(opening) is True


@pytest.mark.parametrize("opening", [
    b'{"command":"list"};;', b' \n{"cmd":"status"}', b"not json at all;;", b"[1]", b"42;;", b";;", b"\x00garbage",
    b"GET/", b"get json x", b"not json at all;;", b"true ;;", b" " * 40, b"A" * 40,
])
def test_protocol_openings_are_not(opening: bytes) -> None:
    assert starts_like_http(opening) is False


@pytest.mark.parametrize("opening", [b"", b"P", b"POS", b"POST", b"\r\n", b"\r\nGE", b"   ", b"post", b"post ",
                                     b"delete http:"])
def test_a_prefix_that_could_still_be_http_waits_for_more(opening: bytes) -> None:
    assert starts_like_http(opening) is None


def test_configured_names_resolve_through_nss() -> None:
    assert user_ids(["root", 65534, "4242"]) == frozenset({0, 65534, 4242})
    assert group_id("root") == 0
    with pytest.raises(ValueError, match="no such user 'no-such-user-xyz'"):
        user_ids(["no-such-user-xyz"])
    with pytest.raises(ValueError, match="groupadd no-such-group-xyz"):
        group_id("no-such-group-xyz")
    policy, gids = resolve_policy(["root"], ["root", "65534"], ["192.0.2.0/24"])
    assert gids == [0, 65534] and policy.groups == frozenset(gids) and policy.daemon_uid == os.geteuid()


def test_an_account_has_its_primary_group() -> None:
    me = account(0)
    assert me.name == "root" and 0 in me.groups
    assert account(4_000_000_000) == PeerAccount(4_000_000_000, None)
