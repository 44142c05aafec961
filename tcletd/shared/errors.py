"""Exception tree and exit statuses shared by the CLI, the host and the policy engine.

Trusted side only in spirit, but imported by both: it holds no logic that could leak host state.
"""

from __future__ import annotations

# Exit statuses (sysexits where one fits; see README "Exit status").
EXIT_OK = 0
EXIT_TCL_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_INPUT = 66
EXIT_UNAVAILABLE = 69
EXIT_SOFTWARE = 70
EXIT_IN_USE = 73  # EX_CANTCREAT: tcletd serve's socket is another live host's
EXIT_TEMPFAIL = 75
EXIT_CONFIG = 78
EXIT_NO_TCLET = 1  # an operator's request named a tclet the host does not have (ps, kill, wait)
EXIT_INTERRUPTED = 130  # the CLI itself got SIGINT (KeyboardInterrupt), as shells report it
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of the CLI's stdout went away (| head)


class TcletdError(Exception):
    """Base of every error tcletd raises on purpose."""

    exit_status = EXIT_SOFTWARE


class ConfigError(TcletdError):
    """A policy, master config or limit that cannot be used, with where it went wrong.

    ``file`` is the path, ``key`` the key path inside it (``connect.allow[2].port``), ``line`` the
    1-based line when known.
    """

    exit_status = EXIT_USAGE

    def __init__(self, message: str, *, file: str = "", key: str = "", line: int = 0) -> None:
        self.message = message
        self.file = file
        self.key = key
        self.line = line
        super().__init__(self.describe())

    def describe(self) -> str:
        where = self.file
        if where and self.line:
            where = f"{where}:{self.line}"
        if self.key:
            where = f"{where}: {self.key}" if where else self.key
        return f"{where}: {self.message}" if where else self.message


class UnknownPolicyError(ConfigError):
    """A policy name that is not among the known ones."""


class RequestError(TcletdError):
    """A tclet's request refused before any socket exists; ``message`` is what the tclet sees."""

    def __init__(self, message: str, errorcode: tuple[str, ...] = ("NONE",)) -> None:
        self.message = message
        self.errorcode = errorcode
        super().__init__(message)


class ProtocolViolation(TcletdError):
    """A worker sent something the host does not accept; the worker is ended."""


class InUse(TcletdError):
    """A resident host's control socket that another live host serves on."""

    exit_status = EXIT_IN_USE


class ScriptNotFound(TcletdError):
    exit_status = EXIT_NO_INPUT


class NoSuchTclet(TcletdError):
    """A request named a tclet the host does not know (or a prefix of several)."""

    exit_status = EXIT_NO_TCLET
