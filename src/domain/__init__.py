"""The pure domain core: aggregates and their events.

Imports only the standard library, ``eventsourcing.domain`` and pydantic (checked by the
architecture contract in CI).
"""
