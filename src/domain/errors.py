"""Domain exceptions: raised by aggregates when a command would break an invariant."""

from __future__ import annotations


class DomainError(ValueError):
    """A command was refused because it would break a domain invariant.

    ``field`` names the input the refusal is about (``"name"``, ``"chains"``, ...) when there
    is one, so that entry points can point a client at it.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidObservation(DomainError):
    """A metric or price observation is not acceptable (NaN, negative, unknown metric...)."""


class InvalidTransition(DomainError):
    """A lifecycle command is not allowed in the aggregate's current state."""
