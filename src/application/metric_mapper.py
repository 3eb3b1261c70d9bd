"""An eventsourcing ``Mapper`` that writes the event ingest creates most without the JSON encoder.

Importing the real snapshot file maps ~47,000 ``Protocol.MetricRecorded`` events; the stock
``Mapper.to_stored_event`` spends ~20 us on each (copying the event's state, a new C encoder
per call, a Python callback for the timestamp). Their state always has the same shape, so
``MetricRecordedMapper`` writes it from a template: the same bytes as the stock mapper with
eventsourcing's ``JSONTranscoder`` (strings through ``json.encoder.encode_basestring``, the
function that transcoder's encoder uses, floats through ``float.__repr__``, as it does), in
~5 us. Anything else, or a state that is not exactly as expected, goes to the stock mapper;
tests/unit/test_metric_mapper.py compares the two byte for byte.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from eventsourcing.persistence import (
    Cipher,
    Compressor,
    DatetimeAsISO,
    JSONTranscoder,
    Mapper,
    StoredEvent,
    Transcoder,
)
from eventsourcing.utils import get_topic

from ..domain.protocol import Protocol

# The event's state in the order its dataclass fields (and so the stock mapper) write it.
_FIELDS: Final = (
    "originator_id",
    "originator_version",
    "timestamp",
    "slug",
    "metric",
    "chain",
    "value",
    "observed_at",
    "source",
)
_quote: Final = json.encoder.encode_basestring  # JSON string, non-ASCII kept as is


class MetricRecordedMapper(Mapper[UUID]):
    """``Mapper`` with a template for ``Protocol.MetricRecorded`` (see the module docstring).

    The template is used only when it writes what the stock mapper would: no cipher, no
    compressor, exactly eventsourcing's ``JSONTranscoder`` (compact, non-ASCII kept) with its
    ``DatetimeAsISO``, and the event class at version 1.
    """

    def __init__(
        self,
        transcoder: Transcoder,
        compressor: Compressor | None = None,
        cipher: Cipher | None = None,
    ) -> None:
        super().__init__(transcoder, compressor=compressor, cipher=cipher)
        encoder = getattr(transcoder, "encoder", None)
        self._template = (
            cipher is None
            and compressor is None
            and type(transcoder) is JSONTranscoder
            and type(transcoder.types.get(datetime)) is DatetimeAsISO
            and isinstance(encoder, json.JSONEncoder)
            and (encoder.item_separator, encoder.key_separator) == (",", ":")
            and not encoder.ensure_ascii
            and getattr(Protocol.MetricRecorded, "class_version", 1) == 1
        )
        self._topic = get_topic(Protocol.MetricRecorded)

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        if self._template and type(domain_event) is Protocol.MetricRecorded:
            stored = self._metric_recorded(domain_event.__dict__)
            if stored is not None:
                return stored
        return super().to_stored_event(domain_event)

    def _metric_recorded(self, state: dict[str, Any]) -> StoredEvent | None:
        if tuple(state) != _FIELDS:
            return None
        stamp, slug, metric, chain = (
            state["timestamp"],
            state["slug"],
            state["metric"],
            state["chain"],
        )
        value, observed_at, source = state["value"], state["observed_at"], state["source"]
        if not (
            type(stamp) is datetime
            and type(slug) is str
            and type(metric) is str
            and type(chain) is str
            and type(value) is float
            and type(observed_at) is float
            and type(source) is str
            and math.isfinite(value)  # repr would write nan/inf, JSON NaN/Infinity
            and math.isfinite(observed_at)
        ):
            return None
        text = (
            f'{{"timestamp":{{"_type_":"datetime_iso","_data_":{_quote(stamp.isoformat())}}},'
            f'"slug":{_quote(slug)},"metric":{_quote(metric)},"chain":{_quote(chain)},'
            f'"value":{value!r},"observed_at":{observed_at!r},"source":{_quote(source)}}}'
        )
        return StoredEvent(
            originator_id=state["originator_id"],
            originator_version=state["originator_version"],
            topic=self._topic,
            state=text.encode("utf8"),
        )
