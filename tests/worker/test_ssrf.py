"""Outbound webhook URLs: https to public addresses only, every resolved address checked."""

from __future__ import annotations

import ipaddress

import pytest

from worker.ssrf import UnsafeWebhookUrlError, check_url, is_public


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "100.64.0.1",  # carrier-grade NAT
        "169.254.169.254",  # cloud metadata
        "169.254.1.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "ff02::1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    """Loopback, private, link-local, unique-local, mapped, metadata and multicast: not public."""
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    """Globally routable unicast addresses pass."""
    assert is_public(ipaddress.ip_address(address))


def test_a_name_is_refused_if_any_address_it_resolves_to_is_private() -> None:
    """One private address among public ones is enough to refuse (no round-robin luck)."""
    with pytest.raises(UnsafeWebhookUrlError, match=r"10\.0\.0\.7"):
        check_url(
            "https://hooks.example.com/in",
            allow_private=False,
            resolve=lambda host, port: ["93.184.215.14", "10.0.0.7"],
        )


def test_localhost_resolves_to_loopback_and_is_refused() -> None:
    """The real resolver: `localhost` is loopback."""
    with pytest.raises(UnsafeWebhookUrlError, match="not a public address"):
        check_url("https://localhost:8443/in", allow_private=False)


def test_public_name_gives_its_checked_addresses_to_connect_to() -> None:
    """The target carries the addresses checked: the sender connects to those, not a re-resolve."""
    target = check_url(
        "https://hooks.example.com:8443/in",
        allow_private=False,
        resolve=lambda host, port: ["93.184.215.14"],
    )
    assert target.addresses == ("93.184.215.14",)
    assert (target.host, target.port) == ("hooks.example.com", 8443)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://93.184.215.14/in", "https"),
        ("ftp://93.184.215.14/in", "https"),
        ("https:///in", "no host"),
        ("https://a:b@93.184.215.14/in", "password"),
        ("https://93.184.215.14/in#x", "fragment"),
        ("https://93.184.215.14:99999/in", "valid URL"),
        ("https://no-such-host.invalid/in", "resolve"),
    ],
)
def test_malformed_or_plain_urls_are_refused(url: str, reason: str) -> None:
    """Only https, with a host, no credentials, no fragment, a valid port, a name that resolves."""
    with pytest.raises(UnsafeWebhookUrlError, match=reason):
        check_url(url, allow_private=False)


def test_allow_private_lets_loopback_and_http_through() -> None:
    """INTAKE_EVENTS_ALLOW_PRIVATE=1: tests and local development reach 127.0.0.1 over http."""
    target = check_url("http://127.0.0.1:8080/in", allow_private=True)
    assert target.addresses == ("127.0.0.1",)
