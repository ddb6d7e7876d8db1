"""Rows every API request reads, kept by the web process between requests for as long as they cannot have changed.

An OpenAI-compatible completion read its API key (with the user and the user's limits) and the model's snapshot
rows before anything else: ~1.4 ms each on its way to the first token, most of it the ORM building and compiling
the query, code that runs cold between requests (0.2 ms when the same query runs in a loop; the issue-15 note).
Those rows change rarely: a key made or revoked, a user or their limits edited, a model pulled, deleted or
updated. So a web process keeps what it read under the *catalog version*, a random token in Redis that every
change to those tables replaces, and uses it only while the token is the same; reading the token is one Redis
round trip (~0.1 ms). A chat message keeps the same way the snapshots its model reference names, the user's
limits and the machines the database remembers.

What replaces the token: a save or delete of any model of catalog_models() (signals, connected in apps.py), and
update() and bulk_create() through their querysets (CatalogQuerySet; a queryset's delete() sends the signals,
and bulk_update() is update()). Always at once and once more when
the transaction commits: a request that reads the rows in between reads them uncommitted-old under the first
new token, and the second one throws that away. Updates of UNTRACKED_FIELDS alone replace nothing: last_used_at
is stamped on every use of a key or a model, and would otherwise empty every memo after each answer.

Without Redis nothing is kept (the request fails anyway: its in-flight slot is in Redis); a memo is also
dropped after MAX_AGE, whatever the token says.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

import redis
from django.db import models, transaction

from models_app.services import redis as app_redis

log = logging.getLogger(__name__)

T = TypeVar("T")
_M = TypeVar("_M", bound=models.Model)

# Stamps of use (and a machine's of life), written all the time; no memo reads them.
UNTRACKED_FIELDS = frozenset({"last_used_at", "last_login", "last_seen"})
MAX_AGE = 60.0  # seconds


def version_key() -> str:
    return app_redis.key("catalog", "version")


def version(*, read: Callable[[str], Any] | None = None) -> str | None:
    """The catalog's current version, or None when Redis does not answer (then nothing is kept). `read`: how to
    GET the key, when not alone (workers.get_with_presence: in the same round trip as other reads)."""
    client = app_redis.client()
    try:
        current = (read or client.get)(version_key())
        if current is None:  # a new Redis, or one that lost its data: memos from before must not match
            client.set(version_key(), uuid.uuid4().hex, nx=True)
            current = client.get(version_key())
    except redis.RedisError:
        return None
    return current


def changed() -> None:
    """Some catalog row changed (or is about to, within the current transaction): a new version, now and again
    at commit."""
    _replace()
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(_replace)


def _replace() -> None:
    try:
        app_redis.client().set(version_key(), uuid.uuid4().hex)
    except redis.RedisError as exc:  # memos end after MAX_AGE anyway
        log.warning("cannot replace the catalog version (memos live up to %.0f s): %r", MAX_AGE, exc)


class Memo(Generic[T]):
    """Values read under a catalog version, by key; at most `size` of them, the oldest used dropped first."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._entries: OrderedDict[Hashable, tuple[str, float, T]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, current: str | None, load: Callable[[], T]) -> T:
        """The value kept for `key` under version `current` (version(), read before: see the module), else
        load(), kept under it unless it is None (a miss is not kept: anyone can ask for keys that do not
        exist, and push the rest out)."""
        now = time.monotonic()
        if current is not None:
            with self._lock:
                found = self._entries.get(key)
                if found is not None and found[0] == current and now - found[1] < MAX_AGE:
                    self._entries.move_to_end(key)
                    return found[2]
        value = load()
        if current is not None and value is not None:
            with self._lock:
                self._entries[key] = (current, now, value)
                self._entries.move_to_end(key)
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        return value


class CatalogQuerySet(models.QuerySet[_M]):
    """A catalog model's queryset: the writes that send no signal replace the catalog version. (Saves and
    deletes send them, a queryset's delete() too, object by object, since receivers listen; bulk_update()
    goes through update().)"""

    def update(self, **kwargs: Any) -> int:
        count = super().update(**kwargs)
        if count and not UNTRACKED_FIELDS.issuperset(kwargs):
            changed()
        return count

    update.alters_data = True  # type: ignore[attr-defined]

    def bulk_create(self, objs: Iterable[_M], *args: Any, **kwargs: Any) -> list[_M]:
        created = super().bulk_create(objs, *args, **kwargs)
        if created:
            changed()
        return created


def catalog_models() -> list[type[models.Model]]:
    from django.contrib.auth import get_user_model

    from models_app.models import ApiKey, Node, Repository, Snapshot, UserLimits

    return [get_user_model(), ApiKey, UserLimits, Repository, Snapshot, Node]


def _saved(sender: type[models.Model], update_fields: Iterable[str] | None = None, **kwargs: Any) -> None:
    if update_fields is not None and UNTRACKED_FIELDS.issuperset(update_fields):
        return
    changed()


def _deleted(sender: type[models.Model], **kwargs: Any) -> None:
    changed()


def connect_signals() -> None:
    """Every save and delete of a catalog model replaces the version (ModelsAppConfig.ready)."""
    from django.db.models.signals import post_delete, post_save

    for model in catalog_models():
        post_save.connect(_saved, sender=model, dispatch_uid=f"catalog-saved-{model._meta.label}")
        post_delete.connect(_deleted, sender=model, dispatch_uid=f"catalog-deleted-{model._meta.label}")
