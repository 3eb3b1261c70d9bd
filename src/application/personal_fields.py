"""Personal fields of stored events, sealed with their account's key (crypto-shredding).

Event sourcing keeps every event forever, so personal data cannot be deleted from the log;
it is encrypted instead, field by field, with a key of the account it belongs to, and
erasing the account destroys that key (docs/adr/0042-crypto-shredding.md).

``PersonalFieldsMapper`` does it between the domain and the store, so the domain stays pure:
on the way out each personal field of the events in ``PERSONAL_FIELDS`` becomes a ``Sealed``
value (key id + AES-GCM box, transcoded as ``{"_type_": "sealed", ...}``); on the way in a
sealed field is opened with its key, or becomes ``REDACTED`` when the key was destroyed, so
the events still replay. An event stored before this existed holds its fields in clear and
replays as it was. Fields are bound to their event (its originator id and field path as
AES-GCM associated data), so a sealed value moved to another event does not open.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cachetools import TTLCache
from eventsourcing.persistence import (
    Cipher,
    Compressor,
    MapperDeserialisationError,
    StoredEvent,
    Transcoder,
    Transcoding,
)

from ..domain.account import Account
from ..domain.alert_rule import AlertRule
from ..domain.api_key import ApiKey
from ..domain.subscription import Subscription, SubscriptionBook
from .metric_mapper import MetricRecordedMapper
from .ports import AccountKey, AccountKeys, Purged

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KEY_CACHE_SECONDS",
    "PERSONAL_FIELDS",
    "REDACTED",
    "KeysOnFirstUse",
    "PersonalFieldsMapper",
    "Sealed",
    "SealedAsDict",
    "new_key_secret",
    "subject_of",
]

# What a field whose key was destroyed replays as.
REDACTED: Final = "[erased]"
# How long a process trusts what it read from the key store. An erase forgets at once in
# its own process; another process may still open a field for this long (in memory only:
# what it writes meanwhile is sealed with the destroyed key, so unreadable too).
KEY_CACHE_SECONDS: Final = 10.0
_NONCE: Final = 12  # bytes; AES-GCM's standard nonce, random per field


@dataclass(frozen=True, slots=True)
class Sealed:
    """A personal field as stored: the key that sealed it and the nonce + ciphertext."""

    key_id: str
    box: bytes


class SealedAsDict(Transcoding):
    """``Sealed`` in eventsourcing's JSON (a ``_type_`` value, which also sends the log's
    fast path to the mapper, so followers see the field opened)."""

    type = Sealed
    name = "sealed"

    def encode(self, obj: Sealed) -> dict[str, str]:
        return {"k": obj.key_id, "b": base64.b64encode(obj.box).decode("ascii")}

    def decode(self, data: Mapping[str, str]) -> Sealed:
        return Sealed(key_id=data["k"], box=base64.b64decode(data["b"]))


Owner = Callable[[Mapping[str, Any]], str | None]


@dataclass(frozen=True, slots=True)
class PersonalFields:
    """Which fields of an event are personal (paths; ``*`` is every item of a list), and
    whose they are (the owner string the account's data is recorded under)."""

    owner: Owner
    paths: tuple[tuple[str, ...], ...]


def _field(name: str) -> Owner:
    return lambda state: state.get(name) or None


def _account_owner(state: Mapping[str, Any]) -> str | None:
    # ``Account.owner``: the legacy owner string, else the account's id.
    return state.get("legacy_owner") or str(state["originator_id"])


_CHANNELS: Final = (
    ("name",),
    ("channels", "*", "url"),
    ("channels", "*", "address"),
    ("channels", "*", "secret"),
)
# Keyed by the event class's qualified name (``@event("Opened")`` makes ``Account.Opened``).
PERSONAL_FIELDS: Final[Mapping[str, PersonalFields]] = {
    f"{Account.__name__}.Opened": PersonalFields(_account_owner, (("name",), ("contact",))),
    f"{ApiKey.__name__}.Issued": PersonalFields(_field("owner"), (("name",),)),
    f"{AlertRule.__name__}.Created": PersonalFields(_field("owner"), _CHANNELS),
    f"{AlertRule.__name__}.Updated": PersonalFields(_field("owner"), _CHANNELS),
    f"{Subscription.__name__}.Opened": PersonalFields(
        _field("owner"), (("name",), ("delivery",), ("webhook", "url"), ("webhook", "secret"))
    ),
    f"{SubscriptionBook.__name__}.Admitted": PersonalFields(_field("owner"), (("name",),)),
}


def subject_of(owner: str) -> str:
    """The key store's name for an owner's key: a digest, so the store holds no owner
    string (a legacy owner is a name someone chose)."""
    return hashlib.sha256(b"defi-realtime/account-key\x00" + owner.encode()).hexdigest()


def _rewrite(state: Any, path: tuple[str, ...], change: Callable[[Any, str], Any]) -> None:
    """Replace the value at ``path`` in ``state`` (in place) by ``change(value, where)``."""
    head, rest = path[0], path[1:]
    if head == "*":
        if isinstance(state, list):
            for item in state:
                _rewrite(item, rest, change)
        return
    if not isinstance(state, dict) or head not in state:
        return
    if rest:
        _rewrite(state[head], rest, change)
    else:
        state[head] = change(state[head], "/".join(path))


class _KeyCache:
    """What the process read from the key store, for ``KEY_CACHE_SECONDS`` (thread-safe:
    the writer and the readers' threads share the mapper)."""

    def __init__(self, keys: AccountKeys, ttl: float) -> None:
        self.keys = keys
        self._lock = threading.Lock()
        self._by_subject: TTLCache[str, AccountKey | None] = TTLCache(maxsize=10_000, ttl=ttl)
        self._by_id: TTLCache[str, bytes | None] = TTLCache(maxsize=10_000, ttl=ttl)

    def key_for(self, subject: str) -> AccountKey | None:
        with self._lock:
            if subject in self._by_subject:
                return self._by_subject[subject]
        key = self.keys.key_for(subject)
        with self._lock:
            self._by_subject[subject] = key
            if key is not None:
                self._by_id[key.key_id] = key.secret
        return key

    def find(self, key_id: str) -> bytes | None:
        with self._lock:
            if key_id in self._by_id:
                return self._by_id[key_id]
        secret = self.keys.find(key_id)
        with self._lock:
            self._by_id[key_id] = secret
        return secret

    def forget(self, subject: str) -> None:
        with self._lock:
            key = self._by_subject.pop(subject, None)
            if key is not None:
                self._by_id.pop(key.key_id, None)


class PersonalFieldsMapper(MetricRecordedMapper):
    """``MetricRecordedMapper`` that seals the personal fields of the events in
    ``PERSONAL_FIELDS`` with their account's key (see the module docstring)."""

    def __init__(
        self,
        transcoder: Transcoder,
        compressor: Compressor | None = None,
        cipher: Cipher | None = None,
        *,
        keys: AccountKeys | None,
        cache_seconds: float = KEY_CACHE_SECONDS,
    ) -> None:
        super().__init__(transcoder, compressor=compressor, cipher=cipher)
        register = getattr(transcoder, "register", None)
        if register is None:
            raise TypeError("the transcoder must accept transcodings (JSONTranscoder)")
        register(SealedAsDict())
        # None: no key store (a bare application, a test): fields are written in clear,
        # and sealed ones read as redacted.
        self._keys = None if keys is None else _KeyCache(keys, cache_seconds)

    def forget(self, owner: str) -> None:
        """Drop what this process cached about ``owner``'s key (after it was destroyed)."""
        if self._keys is not None:
            self._keys.forget(subject_of(owner))

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        fields = PERSONAL_FIELDS.get(type(domain_event).__qualname__)
        if fields is None or self._keys is None:
            return super().to_stored_event(domain_event)
        state = dict(vars(domain_event))
        owner = fields.owner(state)
        if owner is None:  # nothing says whose it is: an event shaped as before accounts
            return super().to_stored_event(domain_event)
        key = self._keys.key_for(subject_of(owner))
        aad = str(state["originator_id"]).encode()
        for name in {path[0] for path in fields.paths}:
            if name in state:
                state[name] = copy.deepcopy(state[name])  # never change the event itself
        for path in fields.paths:
            _rewrite(state, path, lambda value, where: _seal(key, value, aad, where))
        sealed = object.__new__(type(domain_event))
        object.__setattr__(sealed, "__dict__", state)
        return super().to_stored_event(sealed)

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        domain_event = super().to_domain_event(stored_event)
        fields = PERSONAL_FIELDS.get(type(domain_event).__qualname__)
        if fields is None:
            return domain_event
        state = vars(domain_event)
        aad = str(stored_event.originator_id).encode()
        from cryptography.exceptions import InvalidTag

        try:
            for path in fields.paths:
                _rewrite(state, path, lambda value, where: self._open(value, aad, where))
        except InvalidTag:
            raise MapperDeserialisationError(
                f"a sealed field of {stored_event.topic} {stored_event.originator_id} "
                f"v{stored_event.originator_version} does not open with its key"
            ) from None
        return domain_event

    def _open(self, value: Any, aad: bytes, where: str) -> Any:
        if not isinstance(value, Sealed):
            return value  # stored in clear (before sealing), or redacted when written
        secret = None if self._keys is None else self._keys.find(value.key_id)
        if secret is None:
            return REDACTED
        nonce, box = value.box[:_NONCE], value.box[_NONCE:]
        return json.loads(_aesgcm(secret).decrypt(nonce, box, aad + b"|" + where.encode()))


def _seal(key: AccountKey | None, value: Any, aad: bytes, where: str) -> Any:
    if value is None or value == "":
        return value  # nothing personal in an absent value
    if key is None:
        return REDACTED  # the account was erased: never write its data in clear
    nonce = os.urandom(_NONCE)
    plain = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    box = _aesgcm(key.secret).encrypt(nonce, plain, aad + b"|" + where.encode())
    return Sealed(key_id=key.key_id, box=nonce + box)


def _aesgcm(secret: bytes) -> AESGCM:
    # Imported when first used: a command that meets no personal field (an ingest) does
    # not pay for loading the library (~40 ms).
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(secret)


def new_key_secret() -> bytes:
    """A fresh 256-bit data key."""
    return os.urandom(32)


class KeysOnFirstUse:
    """``AccountKeys`` opened on first use: most commands (an ingest) never meet a personal
    field and need not open the key store (its database, its imports)."""

    def __init__(self, open_keys: Callable[[], AccountKeys]) -> None:
        self._open = open_keys
        self._keys: AccountKeys | None = None
        self._lock = threading.Lock()

    def _opened(self) -> AccountKeys:
        with self._lock:
            if self._keys is None:
                self._keys = self._open()
            return self._keys

    def key_for(self, subject: str) -> AccountKey | None:
        return self._opened().key_for(subject)

    def find(self, key_id: str) -> bytes | None:
        return self._opened().find(key_id)

    def destroy(self, subject: str) -> Purged:
        return self._opened().destroy(subject)

    def close(self) -> None:
        with self._lock:
            if self._keys is not None:
                self._keys.close()
                self._keys = None
