"""Reads: what the pages, the REST and OpenAI APIs, the CLI and the websocket consumers show, each written once.

Services write and orchestrate; selectors only read. A selector takes keyword arguments, the first being
`user` (whose view it is: `None` is the system, the CLI run by whoever administers the machine, which sees
every row), and returns a queryset to narrow, order and paginate further, or a small dataclass.

Who may see what is one rule per model, the `visible_to` queryset methods in `models_app/models/`:
- a snapshot (and its repository): staff see all; anyone else sees a repo that is neither private nor gated,
  or one they own (a private or gated repo belongs to whoever pulled it with a token);
- a download job: staff see all; anyone else sees the jobs they asked for.
Selectors apply that rule; callers never filter by user themselves.

- `snapshots.py`: `snapshot_list`, `snapshot_get`, `model_list` (one searchable set of fields: SEARCH_FIELDS)
- `jobs.py`: `job_list`, `job_get`
- `cache.py`: `cache_totals` (per cache root of this node), `repo_usage_list` (biggest repos)
"""
