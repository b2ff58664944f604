"""The gateway's key cache and the naming of a caller's address for the per-address limit."""

from __future__ import annotations

import hashlib
import ipaddress

from libs.config import GatewaySettings
from libs.schemas.tenancy import Role
from services.gateway.auth import _UNKNOWN_ENTRIES, AuthState, Principal, well_formed
from services.gateway.ratelimit import TokenBuckets, client_address


def _digest(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_auth_cache_unknown_keys_never_evict_a_verified_one() -> None:
    auth = AuthState(GatewaySettings(key_cache_s=60))
    valid = Principal(key_id="key_1", tenant="acme", role=Role.USER)
    auth.remember("good", valid)
    for i in range(60_000):  # more than the verified-key cache holds
        auth.remember(_digest(i), None)
    assert auth.cached("good") == (True, valid)
    assert auth.cached(_digest(59_999)) == (True, None)
    assert auth.cached(_digest(0)) == (False, None), "unknown keys are bounded on their own"
    assert len(auth._unknown) == _UNKNOWN_ENTRIES


def test_auth_cache_a_revoked_key_stops_being_known() -> None:
    auth = AuthState(GatewaySettings(key_cache_s=0))
    auth.remember("k", Principal(key_id="key_1", tenant="acme", role=Role.USER))
    assert auth.known("k") and auth.cached("k") == (False, None)  # expired but verified before
    auth.remember("k", None)
    assert not auth.known("k")


def test_auth_well_formed_refuses_wrong_length_and_alphabet() -> None:
    assert well_formed("xpm_" + "a" * 43)
    for bad in ("short", "x" * 257, "xpm_" + "a" * 30 + " b", "xpm_" + "é" * 30, "xpm_" + "a" * 30 + "\x00"):
        assert not well_formed(bad), bad


def _scope(peer: str, *forwarded: str) -> dict[str, object]:
    return {"type": "http", "client": (peer, 1234), "headers": [(b"x-forwarded-for", f.encode()) for f in forwarded]}


def test_ratelimit_client_address_is_the_peer_unless_a_trusted_proxy_forwards() -> None:
    none: tuple[ipaddress.IPv4Network, ...] = ()
    assert client_address(_scope("203.0.113.7", "198.51.100.1"), none) == "203.0.113.7", "XFF ignored by default"
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    assert client_address(_scope("10.1.2.3", "198.51.100.1, 10.4.4.4"), trusted) == "198.51.100.1"
    assert client_address(_scope("203.0.113.7", "198.51.100.1"), trusted) == "203.0.113.7", "untrusted peer"
    spoofed = client_address(_scope("10.1.2.3", "1.1.1.1, 198.51.100.9"), trusted)
    assert spoofed == "198.51.100.9", "only the hop the proxy saw counts, not what the client wrote before it"
    assert client_address(_scope("2001:db8:1:2:3:4:5:6"), none) == client_address(_scope("2001:db8:1:2::9"), none)
    assert client_address(_scope("::ffff:192.0.2.1"), none) == "192.0.2.1"


def test_ratelimit_buckets_are_bounded_and_refuse_past_the_burst() -> None:
    b = TokenBuckets(rate=0.001, burst=3, bound=100)
    assert [b.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("a") > 0
    b.give("a")
    assert b.take("a") == 0.0
    for i in range(500):
        b.take(str(i))
    assert len(b._buckets) == 100
