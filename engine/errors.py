"""One root exception; each subclass carries what an operator or client needs to act."""

from __future__ import annotations


class RollupError(Exception):
    """Root of every error raised on purpose by the engine."""


class ConfigError(RollupError):
    """A setting is missing or invalid; the message names the variable."""


class ComponentError(RollupError):
    """A component (broker, Redis, ClickHouse, database) failed to start or answer."""

    def __init__(self, component: str, detail: str) -> None:
        super().__init__(f"{component}: {detail}")
        self.component = component
        self.detail = detail


class UnavailableError(RollupError):
    """The engine cannot accept data durably right now (broker down, buffer full)."""

    def __init__(self, detail: str, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class InputError(RollupError):
    """Client input is invalid; `errors` maps each field at fault to its messages."""

    def __init__(self, errors: dict[str, list[str]], status: int = 400) -> None:
        super().__init__("; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items()))
        self.errors = errors
        self.status = status


class QueryError(RollupError):
    """A Stats API query is invalid; the message names what is wrong."""


class AuthError(RollupError):
    """Missing or wrong key, or a site the key may not read."""


class OffsetGapError(RollupError):
    """A consumer skipped messages of a partition and could not read them again in time; the
    process exits without committing, so the next owner reads them from the last commit."""
