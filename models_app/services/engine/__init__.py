"""The inference engine: everything that runs inside the inference worker and imports MLX.

Web processes never import this package (they stay light and can be many): only the inference worker's tasks
(tasks/inference.py) do, inside the task. Both sides share `models_app.services.inference`, the contract (the
request and reply shapes, the checks, the keys); the engine imports it, it never imports the engine.

- `registry`: loaded models (LRU, keep-alive, memory budget).
- `prompt_cache`: KV caches of recent prompts, reused by longest common token prefix.
- `prompt`: chat template, context window, dropping the oldest turns.
- `stops`: stop strings (mlx-lm has none).
- `sender`: ordered, batched channel-layer sends and the cancel flag, off the generation thread.
- `state`: the process's registry and prompt cache; load, unload, expire, the heartbeat status.
- `generation`: `generate(request)` (a task thread): the rows, the job handed to the loop, the results; and
  `Job.prepare` / `Job.run_alone`; `alone`: the single-request token loop, for what cannot be batched.
- `batch`: the engine's one loop thread, which owns MLX and runs every request batched per model (mlx-lm's
  BatchGenerator); `answer`: one batched answer's text, stop strings, logprobs and deltas.
"""
