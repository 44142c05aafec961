"""Host and port words of policy rules, compiled (host side; pure).

A host word is ``*``, a name, a glob over names, an address, a CIDR or an address class; a port
word is a number, a range, ``>N``, ``<N`` or ``*``. Origin variables (``$originSocketHost``) are
substituted before a word is compiled, with glob characters escaped: an origin's URL is data,
never a pattern.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from tcletd.policy.addresses import CLASS_KEYS, address_key, canonical_host, network_keys
from tcletd.shared.errors import RequestError

ANY, NAME, GLOB, NETS = range(4)
VARIABLE = re.compile(r"\$(?:\{(\w*)\}|(\w*))")
_GLOB_CHARS = re.compile(r"[*?\[]")
_GLOB_WORD = re.compile(r"[a-z0-9_.*?\[\]!-]+", re.ASCII)
_PORT_NUMBER = re.compile(r"[1-9][0-9]{0,4}|0", re.ASCII)


@dataclass(frozen=True, slots=True)
class HostWord:
    """A compiled host word: ``*``, a name, a glob on names, or address ranges."""

    kind: int
    text: str
    name: str = ""
    glob: re.Pattern[str] | None = None
    nets: tuple[tuple[int, int, int], ...] = ()

    def matches_address(self, key: tuple[int, int]) -> bool:
        if self.kind == NETS:
            version, number = key
            return any(v == version and number & mask == net for v, net, mask in self.nets)
        return self.kind == ANY


def parse_host_word(word: str) -> HostWord:
    """Compile a host word; ValueError says what is wrong with it.

    Names and globs match only the requested name; addresses, CIDRs and classes only
    addresses (an IP-literal request, or the addresses the host resolved); ``*`` both.
    """
    lowered = word.lower()
    if word == "*":
        return HostWord(ANY, word)
    if lowered in CLASS_KEYS:
        return HostWord(NETS, word, nets=CLASS_KEYS[lowered])
    if "/" in word:
        try:
            return HostWord(NETS, word, nets=(network_keys(word),))
        except ValueError as exc:
            raise ValueError(f"expected a CIDR like 10.0.0.0/8 or fd00::/8: {exc}") from None
    if _GLOB_CHARS.search(word):
        labels = [
            label if _GLOB_CHARS.search(label) or label.isascii() else _idna(label)
            for label in lowered.removesuffix(".").split(".")
        ]
        pattern = ".".join(labels)
        if not _GLOB_WORD.fullmatch(pattern):
            raise ValueError(f"expected a glob over host names like *.example.com, got {word!r}")
        return HostWord(GLOB, word, glob=re.compile(fnmatch.translate(pattern)))
    try:
        host = canonical_host(word)
    except RequestError as exc:
        raise ValueError(f"expected a host word: {exc.message}") from None
    if host.ip is not None:
        return HostWord(
            NETS, word, nets=((*address_key(host.ip), (1 << host.ip.max_prefixlen) - 1),)
        )
    return HostWord(NAME, word, name=host.text)


def _idna(label: str) -> str:
    return label.encode("idna").decode("ascii")


def parse_port_word(word: str) -> tuple[int, int]:
    """Compile a port word (``25``, ``1000-2000``, ``>1024``, ``<1025``, ``*``) to a closed range.

    ValueError for malformed numbers and for ranges that can never match (``5-3``, ``>65535``).
    """
    if word == "*":
        return 0, 65535
    if word[:1] in "<>":
        bound = _port_number(word[1:])
        low, high = (bound + 1, 65535) if word[0] == ">" else (0, bound - 1)
    elif "-" in word:
        first, _, second = word.partition("-")
        low, high = _port_number(first), _port_number(second)
    else:
        low = high = _port_number(word)
    if low > high:
        raise ValueError(f"port word {word!r} can never match")
    return low, high


def _port_number(text: str) -> int:
    if not _PORT_NUMBER.fullmatch(text) or int(text) > 65535:
        raise ValueError(f"expected a port number 0..65535 in plain decimal, got {text!r}")
    return int(text)


def substitute(word: str, variables: dict[str, str]) -> str:
    # Escape glob characters in substituted values: an origin's URL is data, never a pattern.
    def value(m: re.Match[str]) -> str:
        text = variables[m.group(1) or m.group(2)]
        return re.sub(r"([*?\[])", r"[\1]", text)

    return VARIABLE.sub(value, word)
