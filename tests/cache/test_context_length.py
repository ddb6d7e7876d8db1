"""One reading of a model's context window, whoever asks: the pull and the cache import record it, the plan
shows it, and the engine trims prompts to it. They used to read it three ways (the pull looked only at
max_position_embeddings), so the same model could record 2048 and generate with 4096."""

from __future__ import annotations

from typing import Any

import pytest

from models_app.services import cache_layout
from models_app.services.engine.registry import DEFAULT_CONTEXT_LENGTH, context_length_of


class Tokenizer:
    def __init__(self, model_max_length: Any) -> None:
        self.model_max_length = model_max_length


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"max_position_embeddings": 8192}, 8192),
        ({"n_positions": 1024}, 1024),  # gpt2-style: the pull used to record nothing
        ({"seq_length": 2048, "text_config": {"max_position_embeddings": 4096}}, 2048),
        ({"text_config": {"max_sequence_length": 32768}}, 32768),
        ({"text_config": "not a dict", "max_position_embeddings": 512}, 512),
        ({"text_config": "not a dict"}, None),
        ({"max_position_embeddings": 0, "n_positions": 777}, 777),
        ({"max_position_embeddings": True}, None),  # a bool is not a length
        ({"max_position_embeddings": "4096"}, None),
        ({}, None),
    ],
)
def test_the_pull_the_import_and_the_engine_agree(config: dict[str, Any], expected: int | None) -> None:
    assert cache_layout.context_length(config) == expected
    # The engine takes the config's figure whenever there is one, whatever the tokenizer says.
    engine = context_length_of(config, Tokenizer(model_max_length=123))
    assert engine == (expected if expected is not None else 123)


def test_the_engine_falls_back_to_the_tokenizer_then_to_the_default() -> None:
    assert context_length_of({}, Tokenizer(model_max_length=3000)) == 3000
    # Tokenizers without a limit report a huge sentinel: not a real window.
    assert context_length_of({}, Tokenizer(model_max_length=int(1e30))) == DEFAULT_CONTEXT_LENGTH
    assert context_length_of({}, object()) == DEFAULT_CONTEXT_LENGTH
