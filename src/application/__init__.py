"""Use cases and queries of defi-realtime, behind ports (``ports.py``)."""
