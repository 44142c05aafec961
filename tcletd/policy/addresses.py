"""Host, port and origin-URL canonicalisation for the policy engine (host side).

Every host and port a tclet names passes through here before any rule sees it, so that each
address or name has exactly one spelling by the time it is matched. The plugin matched raw
strings and was bypassed by ``0x19`` for 25, ``2130706433`` for 127.0.0.1 or an upper-case
domain; this module is the fix. It does no I/O: names are never
resolved here, and service names are returned to the caller for lookup.

Origins (:class:`Origin`) are canonicalised here too, because a rule's ``$originSocketHost``
must be spelled exactly as the request hosts it is compared with.

The caller must resolve :attr:`CanonicalHost.text`, never the tclet's original spelling, so that
the name the rules saw is the name that was resolved.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from urllib.parse import urlsplit

from tcletd.shared.errors import RequestError

IPAddress = IPv4Address | IPv6Address

MAX_HOST_LENGTH = 253
# Refuse absurd input before doing any work on it; a real host is never this long.
_MAX_RAW_LENGTH = 1024
_HEX = frozenset("0123456789abcdefABCDEF")
_OCT = frozenset("01234567")
_DEC = frozenset("0123456789")
_LABEL = re.compile(r"[a-z0-9_-]{1,63}", re.ASCII)
_SCOPE = re.compile(r"[A-Za-z0-9_.-]{1,64}", re.ASCII)
_PORT = re.compile(r"[1-9][0-9]{0,4}|0", re.ASCII)
_SERVICE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}", re.ASCII)
_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")

# Named address classes. "private" is an explicit list rather than ipaddress's is_private,
# which changes between Python releases and leaves out 100.64/10 (on 3.11, 100.64.0.1 is
# neither is_private nor is_global).
NAMED_CLASSES: dict[str, tuple[str, ...]] = {
    "loopback": ("127.0.0.0/8", "::1/128"),
    "private": ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"),
    "link-local": ("169.254.0.0/16", "fe80::/10"),
    "multicast": ("224.0.0.0/4", "ff00::/8"),
    "unspecified": ("0.0.0.0/32", "::/128"),
    "metadata": ("169.254.169.254/32", "fd00:ec2::254/128"),
}


@dataclass(frozen=True, slots=True)
class CanonicalHost:
    """One host in its only spelling: ``ip`` is set for address literals, ``None`` for names."""

    text: str
    ip: IPAddress | None


def show(text: str, limit: int = 64) -> str:
    """A tclet's text made safe to print: control characters escaped, length capped."""
    out = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit]
    )
    return out + "..." if len(text) > limit else out


def _invalid(text: str, why: str) -> RequestError:
    return RequestError(f'invalid host "{show(text)}": {why}', ("TCLETD", "HOST", "INVALID"))


def normalise_address(ip: IPAddress) -> IPAddress:
    """Unwrap an IPv4-mapped IPv6 address so ``::ffff:127.0.0.1`` is matched as 127.0.0.1."""
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_ipv4(text: str) -> IPv4Address | None:
    """Parse IPv4 the way ``inet_aton`` (and so Tcl's ``socket``) does, or return None.

    Accepts 1 to 4 dot-separated parts, each decimal, octal (leading 0) or hex (0x); the last
    part fills the remaining bytes: ``127.1``, ``0x7f000001``, ``0177.0.0.1``, ``2130706433``.
    """
    parts = text.split(".")
    if len(parts) > 4:
        return None
    values: list[int] = []
    for part in parts:
        if part[:2] in ("0x", "0X"):
            digits, base, allowed = part[2:], 16, _HEX
        elif len(part) > 1 and part[0] == "0":
            digits, base, allowed = part[1:], 8, _OCT
        else:
            digits, base, allowed = part, 10, _DEC
        # int() alone would accept "1_0", " 1" and non-ASCII digits.
        if not digits or not set(digits) <= allowed:
            return None
        values.append(int(digits, base))
    *head, last = values
    if any(v > 255 for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = last
    for i, v in enumerate(head):
        number |= v << (8 * (3 - i))
    return IPv4Address(number)


def _parse_ipv6(text: str) -> IPAddress | None:
    if ":" not in text:
        return None
    _, _, scope = text.partition("%")
    if scope and not _SCOPE.fullmatch(scope):
        return None
    try:
        ip = IPv6Address(text)
    except ValueError:
        return None
    return normalise_address(ip)


# Pure and asked again for the same spellings on every connect (~14 us each here); a refusal
# raises and so is never cached. Bounded: a tclet cycling spellings only costs itself misses.
@functools.lru_cache(maxsize=4096)
def canonical_host(text: str) -> CanonicalHost:
    """Reduce every spelling of a host to one; raise RequestError for what cannot be a host.

    Collapses surrounding white space, upper case, a trailing dot, every IPv4 form inet_aton
    accepts, IPv6 with or without brackets, IPv4-mapped IPv6 and internationalised names
    (IDNA, then lower case). Refuses empty hosts, hosts over 253 characters, control
    characters, inner white space, a leading ``-`` (it would read as an option) and characters
    no host name has.
    """
    if len(text) > _MAX_RAW_LENGTH:
        raise _invalid(text, "too long")
    stripped = text.strip()
    if not stripped:
        raise _invalid(text, "empty host")
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in stripped):
        raise _invalid(text, "control character")
    if any(c.isspace() for c in stripped):
        raise _invalid(text, "white space inside")
    if stripped.startswith("-"):
        raise _invalid(text, "starts with -")
    if stripped.startswith("[") and stripped.endswith("]"):
        inner = stripped[1:-1]
        ip6 = _parse_ipv6(inner)
        if ip6 is None:
            raise _invalid(text, "not an IPv6 address inside brackets")
        return CanonicalHost(str(ip6), ip6)
    ip6 = _parse_ipv6(stripped)
    if ip6 is not None:
        return CanonicalHost(str(ip6), ip6)
    if ":" in stripped:
        raise _invalid(text, "not a host name or address")
    name = stripped[:-1] if stripped.endswith(".") else stripped
    if not name.isascii():
        try:
            # The built-in codec applies nameprep (NFKC, case folding), so fullwidth digits
            # and dots become ASCII here and the IPv4 check below still sees them.
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise _invalid(text, "not a valid internationalised name") from None
        name = name.removesuffix(".")
    name = name.lower()
    ip4 = parse_ipv4(name)
    if ip4 is not None:
        return CanonicalHost(str(ip4), ip4)
    if len(name) > MAX_HOST_LENGTH:
        raise _invalid(text, f"longer than {MAX_HOST_LENGTH} characters")
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise _invalid(text, "not a host name or address")
    return CanonicalHost(name, None)


def port_error(text: str) -> RequestError:
    """The plugin's refusal of a port spelling, word for word (its ``socket`` alias said
    ``permission denied: non numeric port P`` for anything but plain decimal)."""
    return RequestError(f"permission denied: non numeric port {text}")


def parse_port(text: str, *, services: bool = False, allow_zero: bool = False) -> int | str:
    """Parse a tclet's port: plain decimal 1..65535 (0 too with ``allow_zero``, for listen).

    No sign, padding, leading zero, hex or octal: all are refused with the plugin's message
    ``permission denied: non numeric port <text>``, as is a number out of range. With
    ``services`` a service name (``http``) is returned unchanged for the caller to look up
    (``socket.getservbyname(name, "tcp")``); the engine itself never does that I/O.
    """
    if _PORT.fullmatch(text):
        number = int(text)
        if number <= 65535 and (number or allow_zero):
            return number
        raise port_error(text)
    if services and _SERVICE.fullmatch(text):
        return text
    raise port_error(text)


def address_key(ip: IPAddress) -> tuple[int, int]:
    """(version, integer) of an address: what CIDR matching compares, scope ids left out."""
    return ip.version, int(ip)


def network_keys(cidr: str) -> tuple[int, int, int]:
    """(version, network integer, mask integer) of a CIDR; mapped IPv6 ranges become IPv4.

    Raises ValueError for malformed CIDRs and ones with host bits set.
    """
    net = ipaddress.ip_network(cidr, strict=True)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_V4_MAPPED):
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None
        net4 = ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}")
        return 4, int(net4.network_address), int(net4.netmask)
    return net.version, int(net.network_address), int(net.netmask)


CLASS_KEYS: dict[str, tuple[tuple[int, int, int], ...]] = {
    name: tuple(network_keys(c) for c in cidrs) for name, cidrs in NAMED_CLASSES.items()
}


# ---------------------------------------------------------------- origins

_DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "ws": 80, "wss": 443}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
VARIABLES = (
    "originURL",
    "originHomeDirURL",
    "originProto",
    "originHost",
    "originSocketHost",
    "originPort",
)


def _normalise_path(path: str) -> str:
    # Decode escaped unreserved characters first so that %2e%2e is removed as "..": a
    # master-config glob like http://h:80/ok/* must not match http://h:80/ok/%2e%2e/evil.
    def unescape(m: re.Match[str]) -> str:
        char = chr(int(m.group(1), 16))
        return char if char in _UNRESERVED else m.group().upper()

    path = re.sub(r"%([0-9A-Fa-f]{2})", unescape, path or "/")
    out: list[str] = []
    segments = path.split("/")[1:]
    for seg in segments:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    trailing = "/" if segments and segments[-1] in (".", "..") else ""
    return "/" + "/".join(out) + trailing


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a tclet came from, fixed at launch; its parts are the rules' origin variables.

    An origin that cannot be parsed, or none, is *unknown*: every part reads ``UNKNOWN <Part>``
    as in the plugin, and no rule naming an origin variable matches it.
    """

    url: str
    home_dir_url: str
    proto: str
    host: str
    socket_host: str
    port: str
    path: str
    key: str
    known: bool

    @classmethod
    def unknown(cls) -> Origin:
        return cls(
            "UNKNOWN originURL",
            "UNKNOWN originHomeDirURL",
            "UNKNOWN originProto",
            "UNKNOWN originHost",
            "UNKNOWN originSocketHost",
            "UNKNOWN originPort",
            "UNKNOWN originPath",
            "UNKNOWN originKey",
            False,
        )

    @classmethod
    def parse(cls, url: str | None) -> Origin:
        """Canonicalise an origin URL; never raises (anything unusable gives the unknown origin).

        Scheme and host are lowercased and canonicalised like request hosts, the default port
        is made explicit (http 80, https 443, ftp 21, ws 80, wss 443), user info is dropped and
        dot segments removed. ``file:`` URLs have socket host ``localhost`` and no port.
        """
        try:
            return cls._parse(url) if isinstance(url, str) else cls.unknown()
        except (ValueError, RequestError):
            return cls.unknown()

    @classmethod
    def _parse(cls, url: str) -> Origin:
        if len(url) > 4096 or not url.isprintable() or any(c.isspace() or c == "\\" for c in url):
            raise ValueError(url)
        parts = urlsplit(url)
        proto = parts.scheme.lower()
        path = _normalise_path(parts.path)
        query = f"?{parts.query}" if parts.query else ""
        if proto == "file":
            if parts.port is not None or not parts.path.startswith("/"):
                raise ValueError(url)
            host = canonical_host(parts.hostname).text if parts.hostname else ""
            host = "" if host == "localhost" else host
            socket_host, port, base = host or "localhost", "", f"file://{host}"
        elif proto in _DEFAULT_PORTS and parts.hostname:
            canon = canonical_host(parts.hostname)
            number = parts.port if parts.port is not None else _DEFAULT_PORTS[proto]
            if not 0 < number < 65536:
                raise ValueError(url)
            host = socket_host = canon.text
            port = str(number)
            shown = f"[{host}]" if ":" in host else host
            base = f"{proto}://{shown}:{port}"
        else:
            raise ValueError(url)
        home = base + path[: path.rfind("/") + 1]
        return cls(
            base + path + query, home, proto, host, socket_host, port, path, parts.fragment, True
        )

    @property
    def site(self) -> str:
        """What the host's penalty box holds: scheme, host and port without the path
        (``http://127.0.0.1:80``, what the web calls an origin); a local file is a site of its
        own (``file:///srv/t.tcl``: the operator named it); every unknown origin is one site."""
        if not self.known:
            return self.url
        if self.proto == "file":
            return self.home_dir_url + self.path[self.path.rfind("/") + 1 :]
        return self.home_dir_url[: len(self.home_dir_url) - self.path.rfind("/") - 1]

    def variables(self) -> dict[str, str]:
        return {
            "originURL": self.url,
            "originHomeDirURL": self.home_dir_url,
            "originProto": self.proto,
            "originHost": self.host,
            "originSocketHost": self.socket_host,
            "originPort": self.port,
        }


def origin_problem(url: str) -> str | None:
    """Why ``url`` is no origin a tclet may be launched with (one :meth:`Origin.parse` cannot
    read, which would silently make the origin unknown), or None. The one check of a given
    origin: ``tcletd run --origin``, ``policy check --origin``, the API and the run frame."""
    if Origin.parse(url).known:
        return None
    return f"cannot parse origin URL {url[:200]!r}"
