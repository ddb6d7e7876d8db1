"""File metadata when the Hub's model info has none (DESIGN.md "Downloads" 3, issue 12).

A Hub mirror may answer `model_info(files_metadata=True)` without per-file sizes, blob ids or LFS data (olah
0.5 gives `size=None` for every sibling), and planning from that would expect 0-byte files and fail every pull
`integrity`. The tree listing carries the same facts (olah serves it, after a 307 to a trailing slash), so
the files are planned from it instead; the Hub itself always sends them, and then nothing changes.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from models_app.services.cache_layout import FileRecord
from models_app.services.hub_checks import plan_files


def lacks_file_metadata(siblings: list[Any]) -> bool:
    return any(getattr(s, "size", None) is None for s in siblings)


def files_from_tree(
    api: Any, repo_id: str, *, revision: str, token: str | bool, check: Any = lambda: None
) -> list[FileRecord]:
    """FileRecords from the recursive tree listing of `revision` (a commit sha), checked like model info's."""
    from huggingface_hub.hf_api import RepoFile

    entries = []
    for item in api.list_repo_tree(repo_id, revision=revision, recursive=True, token=token):
        check()
        if isinstance(item, RepoFile):  # folders are listed too
            entries.append(
                SimpleNamespace(rfilename=item.path, size=item.size, blob_id=item.blob_id, lfs=item.lfs)
            )
    return plan_files(entries)
