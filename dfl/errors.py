"""The one exception hierarchy of dfl-sim.

Every error a user can cause (config, CLI, data) is a :class:`DflError`; the CLI prints its message as
one paragraph and exits with code 2. A message says what was given, what is allowed and what to do.
"""

from __future__ import annotations

import signal


class DflError(Exception):
    """Base class: a problem the user can fix; printed without a traceback."""

    exit_code = 2


class ConfigError(DflError):
    """The experiment configuration is invalid; ``errors`` holds ``(dotted.path, message)`` pairs."""

    def __init__(self, errors: list[tuple[str, str]] | str, *, source: str | None = None) -> None:
        if isinstance(errors, str):
            errors = [("", errors)]
        self.errors = errors
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        where = f" in {self.source}" if self.source else ""
        if len(self.errors) == 1:
            path, msg = self.errors[0]
            return f"Invalid config{where}: {path + ': ' if path else ''}{msg}"
        lines = [f"Invalid config{where} ({len(self.errors)} errors):"]
        lines += [f"  {path + ': ' if path else ''}{msg}" for path, msg in self.errors]
        return "\n".join(lines)


class UnknownNameError(ConfigError):
    """A registry lookup failed; the message lists the known names."""


class DataError(DflError):
    """A data set is missing, unreadable or too small for the requested split."""


class RunError(DflError):
    """A run directory cannot be created, resumed or compared."""


class ParticipantError(DflError):
    """A participant raised while training or evaluating; the message names the node and the round."""

    exit_code = 1


class EngineFault(DflError):
    """A worker hosting participants died; the run can recover from its last checkpoint."""

    exit_code = 1

    def __init__(self, message: str, shard: int = -1, nodes: tuple[int, ...] = (), recoverable: bool = True) -> None:
        super().__init__(message)
        self.shard = shard
        self.nodes = nodes
        self.recoverable = recoverable

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.shard, self.nodes, self.recoverable))


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's or ``docker stop``'s), raised where the main thread is, like Ctrl-C: the
    run stops as interrupted and can be resumed."""


def raise_terminated(signum: int, frame: object) -> None:
    """SIGTERM handler: raise :class:`Terminated` once; later SIGTERMs are ignored while the run winds down."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()
