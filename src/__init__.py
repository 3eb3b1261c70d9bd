"""defi-realtime: a real-time DeFi analytics engine.

An event-sourced domain library (``defi_realtime.domain``) with an application layer
(``defi_realtime.application``) behind ports, swappable adapters
(``defi_realtime.adapters``) and entrypoints (``defi_realtime.entrypoints``).
"""

__version__ = "0.1.0"
