"""Country of a client address, from the offline RIR database embedded in `iptocc`."""

from __future__ import annotations

import ipaddress

import iptocc


def country_of(ip: str) -> str:
    """ISO 3166-1 alpha-2 (uppercase), or "" for private, reserved, invalid or unknown addresses.

    The address itself is never logged or kept.
    """
    try:
        addr = ipaddress.ip_address(ip.strip())
    except ValueError:
        return ""
    # iptocc does not see through IPv4-mapped IPv6 (::ffff:a.b.c.d), which dual-stack sockets give.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if not addr.is_global:
        return ""
    code = iptocc.country_code(str(addr))
    if not code or len(code) != 2 or not code.isalpha() or code.upper() == "ZZ":
        return ""
    return code.upper()
