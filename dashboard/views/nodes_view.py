"""The machines, as the overview and the health page show them (one include: dashboard/_nodes.html)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def node_cards(
    nodes: list[dict[str, Any]], ready_by_node: dict[str, int] | None = None
) -> list[dict[str, Any]]:
    """health_for()'s nodes with what a template cannot compute: a datetime for "last seen", and the disk
    per cache root as a list."""
    cards = []
    for node in nodes:
        seen = node.get("last_seen")
        cards.append(
            {
                **node,
                "last_seen_at": datetime.fromtimestamp(seen, tz=UTC) if seen else None,
                "disks": [{"root": root, **usage} for root, usage in sorted(node.get("disk", {}).items())],
                "ready": None if ready_by_node is None else ready_by_node.get(node["name"], 0),
            }
        )
    return cards
