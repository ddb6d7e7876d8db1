"""A snapshot's chat-template markers, in its row: what the OpenAI API needs to split an answer into content,
reasoning and tool calls.

The worker that has the files computes them when the snapshot becomes ready (a pull, the reconcile's import, a
local registration) and fills rows written before this field existed, lazily, on the node that holds them
(reconcile, verify, a model load). The web server only ever reads the row: it may run on a machine that has
none of the files. A row not filled yet answers as plain text (no tool or reasoning parsing), never by reading
a path the web server may not have.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from django.conf import settings

from models_app.models import Snapshot
from models_app.openai.parsing import NO_MARKERS, Markers, markers_for_path

log = logging.getLogger(__name__)


def read_markers(model_dir: str | Path) -> dict[str, Any] | None:
    """The markers of the model in this directory, as stored in Snapshot.markers; None when the directory is
    not here (nothing is known then: "no markers" would be a claim about files we did not read)."""
    root = Path(model_dir)
    if not root.is_dir():
        return None
    return markers_for_path(root).as_payload()


def markers_of(snapshot: Snapshot) -> Markers:
    """What the API parses an answer of this snapshot with (web side: the row only)."""
    return Markers.from_payload(snapshot.markers) or NO_MARKERS


def fill_markers(snapshot: Snapshot) -> bool:
    """Compute and store the markers of a snapshot of this node whose row has none. Returns whether it did."""
    from models_app.services.cache import snapshot_path
    from models_app.services.cache_layout import CacheError

    if snapshot.markers is not None or snapshot.node != settings.NODE_NAME:
        return False
    try:
        markers = read_markers(snapshot_path(snapshot))
    except CacheError:
        return False
    if markers is None:
        return False
    Snapshot.objects.filter(id=snapshot.id, markers__isnull=True).update(markers=markers)
    snapshot.markers = markers
    return True


def backfill_markers() -> int:
    """Fill the markers of every ready or partial snapshot of this node that has none (rows from before the
    field, or whose files were not readable when they were written). Re-running it is a no-op."""
    filled = 0
    rows = Snapshot.objects.select_related("repository").filter(
        node=settings.NODE_NAME,
        markers__isnull=True,
        status__in=[Snapshot.Status.READY, Snapshot.Status.PARTIAL],
    )
    for snapshot in rows:
        try:
            filled += fill_markers(snapshot)
        except Exception:  # one odd snapshot must not stop the others (or the reconcile that calls this)
            log.exception("could not read the markers of snapshot %s", snapshot.id)
    return filled
