"""Where outbound webhooks may go: `https` to public addresses only, checked at registration
and again at every connect, against the address actually connected to.

A name is resolved, every address it gives is checked, and the request is made to one of
those checked addresses (the name kept for `Host` and TLS), so a DNS answer that changes
between the check and the connect (DNS rebinding) cannot point a delivery inward.
`INTAKE_EVENTS_ALLOW_PRIVATE=1` lifts the address rule and allows `http`, for tests and
local development only.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Cloud metadata services: link-local or unique-local already, named to be sure.
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
MAX_URL_LENGTH = 2000

Resolver = Callable[[str, int], list[str]]


class UnsafeWebhookUrlError(ValueError):
    """A URL that outbound webhooks may not reach; the message says why."""


@dataclass(frozen=True)
class Target:
    """A checked URL: the address to connect to, and the name it was reached by."""

    url: str
    host: str
    port: int
    addresses: tuple[str, ...]


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeWebhookUrlError(f"the host {host!r} does not resolve ({exc})") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast, looking through IPv4 carried inside IPv6."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None and not is_public(embedded):
            return False
    return (
        address not in METADATA_ADDRESSES
        and address.is_global
        and not address.is_multicast
        and not address.is_unspecified
        and not address.is_reserved
    )


def check_url(url: str, *, allow_private: bool, resolve: Resolver = system_resolver) -> Target:
    """The URL's target if webhooks may go there; UnsafeWebhookUrlError says why not."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeWebhookUrlError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeWebhookUrlError(f"not a valid URL ({exc})") from None
    allowed_schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in allowed_schemes:
        raise UnsafeWebhookUrlError("the URL must start with https://")
    host = parts.hostname
    if not host:
        raise UnsafeWebhookUrlError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeWebhookUrlError("the URL may not carry a user name or password")
    if parts.fragment:
        raise UnsafeWebhookUrlError("the URL may not have a #fragment")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        addresses = resolve(host, port)
    if not addresses:
        raise UnsafeWebhookUrlError(f"the host {host!r} does not resolve")
    if not allow_private:
        for text in addresses:
            address = ipaddress.ip_address(text.split("%")[0])
            if not is_public(address):
                raise UnsafeWebhookUrlError(
                    f"the host {host!r} is, or resolves to, {address}, which is not a public "
                    "address (loopback, private, link-local and metadata addresses are refused)"
                )
    return Target(url=url, host=host, port=port, addresses=tuple(addresses))
