"""The policy actions: the one place where an action (``connect``, ``listen``, ``accept``) is
declared. Host side; pure.

Everything that knows the set of actions reads it from :data:`ACTIONS`: the policy file schema
(one ``[action]`` section each, with ``allow`` and ``disallow`` lists), the engine's compiled
sections and its decision, ``tcletd policy lint`` and ``tcletd policy check --action``, and the
documentation test for ``docs/policy.md``. Adding an action means a spec here, and the host and
worker code that makes the requests it governs.

Light on purpose (no dataclasses, no typing at run time): the command line reads the action
names when it builds its parser, and ``tcletd run --host`` must not pay for the engine.
"""

from __future__ import annotations

# Not typing.TYPE_CHECKING: importing typing costs the command line start-up time (mypy takes any
# name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from tcletd.policy.addresses import CanonicalHost, Origin

# An empty host in a request stands for the tclet's origin (the plugin's rule for connects).
ORIGIN_HOST = "$originSocketHost"


class ActionSpec:
    """One action: its section name, what it governs, what its rules' host and port words are
    matched against (``docs/policy.md``'s section table, checked by a test), what an empty host
    in a request means (:data:`ORIGIN_HOST` or a literal address) and whether port 0 (any free
    port) is a valid request. Immutable by convention: specs are made once, here."""

    __slots__ = ("empty_host", "help", "host_matched", "name", "port_matched", "port_zero")

    def __init__(
        self,
        name: str,
        help: str,
        host_matched: str,
        port_matched: str,
        empty_host: str,
        *,
        port_zero: bool,
    ) -> None:
        self.name = name
        self.help = help
        self.host_matched = host_matched
        self.port_matched = port_matched
        self.empty_host = empty_host
        self.port_zero = port_zero

    def __repr__(self) -> str:
        return f"ActionSpec({self.name!r})"

    def target_host(self, host: str, origin: Origin) -> str:
        """The host a request names, with an empty one filled in as the plugin did."""
        if host:
            return host
        return origin.socket_host if self.empty_host == ORIGIN_HOST else self.empty_host

    def parse_request(
        self, host: str, port: str, *, services: bool
    ) -> tuple[CanonicalHost, int | str]:
        """A request's host canonicalised and its port: a number, or a service name still to
        be looked up (only when ``services``). The port is checked first, as the plugin did;
        RequestError words a bad one as the plugin did."""
        from tcletd.policy.addresses import canonical_host, parse_port

        number = parse_port(port, services=services, allow_zero=self.port_zero)
        return canonical_host(host), number


ACTIONS: dict[str, ActionSpec] = {
    spec.name: spec
    for spec in (
        ActionSpec(
            "connect",
            "where a tclet may connect",
            "the requested host (its name and every resolved address)",
            "the requested port",
            ORIGIN_HOST,
            port_zero=False,
        ),
        ActionSpec(
            "listen",
            "local address (-myaddr, else 0.0.0.0) and port it may bind",
            "the `-myaddr` address, or `0.0.0.0` when none is given",
            "the port to bind (`0` = OS-chosen)",
            "0.0.0.0",
            port_zero=True,
        ),
        ActionSpec(
            "accept",
            "peers that may connect to its server sockets",
            "the peer's address",
            "the peer's port",
            "0.0.0.0",
            port_zero=False,
        ),
    )
}


def action_spec(name: object) -> ActionSpec:
    """The spec of an action given by name; ValueError names the known ones."""
    spec = ACTIONS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"unknown action {name!r}; expected one of {', '.join(ACTIONS)}")
    return spec


class _Names:
    """``Action.CONNECT`` is ``"connect"``: the registry's names as attributes, for callers that
    prefer a name they cannot misspell silently (an unknown one raises AttributeError)."""

    def __getattr__(self, attr: str) -> str:
        if attr.lower() not in ACTIONS:
            raise AttributeError(f"unknown action {attr!r}; expected one of {', '.join(ACTIONS)}")
        return attr.lower()


Action = _Names()
