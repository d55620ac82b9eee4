"""Country of a client address, from the offline RIR database embedded in `iptocc`."""

from __future__ import annotations

import ipaddress
import socket

import iptocc


def country_of(ip: str) -> str:
    """ISO 3166-1 alpha-2 (uppercase), or "" for private, reserved, invalid or unknown addresses.

    The address itself is never logged or kept.
    """
    text = ip.strip()
    addr, canonical = _address(text)
    if addr is None:
        return ""
    # iptocc does not see through IPv4-mapped IPv6 (::ffff:a.b.c.d), which dual-stack sockets give.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr, canonical = addr.ipv4_mapped, False
    if not addr.is_global:
        return ""
    code = iptocc.country_code(text if canonical else str(addr))
    if not code or len(code) != 2 or not code.isalpha() or code.upper() == "ZZ":
        return ""
    return code.upper()


def _address(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address | None, bool]:
    """The address, and whether `text` is already its canonical spelling."""
    # The C parser first: a third of the cost of ipaddress's own for the usual IPv4 address,
    # and as strict (dotted quad, no leading zeros); anything else takes the general path.
    try:
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text)), True
    except (OSError, ValueError):  # ValueError: an embedded NUL
        pass
    try:
        return ipaddress.ip_address(text), False
    except ValueError:
        return None, False
