"""The development and test harness: a local Hugging Face Hub look-alike with fault injection (`localhub`),
the tiny random-weight MLX model (`tinymodel`), a private Redis server (`redis_server`) and the real worker
and server processes the tests start (`processes`). `tests/` and `bench/` import it from the repository root;
the product (`dashboard`, `models_app`, `tasks`) never imports it, and `pip install` does not ship it
(tests/foundation/test_import_directions.py and pyproject.toml's package list keep it so)."""
