"""The tiny test model works with the real mlx-lm: loads, chats, generates, is reproducible."""

from __future__ import annotations

import hashlib
import json
import struct
import time
from pathlib import Path

import mlx.nn as nn
import mlx_lm
import pytest
from mlx_lm import stream_generate
from mlx_lm.generate import GenerationResponse

from devkit.tinymodel import (
    IM_END,
    IM_END_ID,
    MODEL_FILES,
    build_tiny_model,
    tiny_model_dir,
    tiny_model_files,
)

SENTENCE = 'Hello there! How are you today? é 🙂 {"a": 1}\n\tend'


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _chat_prompt(tokenizer, text: str = "hi") -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="module")
def model_dir(cache_root: Path) -> Path:
    return tiny_model_dir(cache_root)


@pytest.fixture(scope="module")
def loaded(model_dir: Path):
    return mlx_lm.load(str(model_dir))


def test_directory_holds_a_hub_mlx_repo(model_dir: Path) -> None:
    files = tiny_model_files(model_dir)
    assert sorted(files) == sorted(MODEL_FILES)
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(MODEL_FILES)

    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert (config["hidden_size"], config["num_hidden_layers"]) == (32, 2)
    assert "quantization" not in config
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    assert config["vocab_size"] == len(tokenizer["model"]["vocab"])
    assert 300 <= config["vocab_size"] <= 500

    # The safetensors header carries the metadata mlx-lm writes.
    raw = (model_dir / "model.safetensors").read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    assert header["__metadata__"] == {"format": "mlx"}
    assert header["model.embed_tokens.weight"]["shape"] == [config["vocab_size"], 32]

    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["eos_token"] == IM_END
    assert "add_generation_prompt" in tokenizer_config["chat_template"]
    assert "library_name: mlx" in (model_dir / "README.md").read_text()


def test_chat_template_renders_and_tokenizes(loaded) -> None:
    _, tokenizer = loaded
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert ids.count(IM_END_ID) == 4  # special tokens encode as single ids
    assert tokenizer.decode(ids) == text
    without = tokenizer.apply_chat_template(messages[:2], add_generation_prompt=False, tokenize=False)
    assert not without.endswith("assistant\n")


def test_encode_decode_round_trips(loaded) -> None:
    _, tokenizer = loaded
    ids = tokenizer.encode(SENTENCE)
    assert len(ids) < len(SENTENCE.encode())  # the BPE merges actually merge
    assert tokenizer.decode(ids) == SENTENCE
    assert tokenizer.eos_token == IM_END
    assert tokenizer.eos_token_ids == {IM_END_ID}


def test_stream_generate_yields_max_tokens(loaded) -> None:
    model, tokenizer = loaded
    prompt = _chat_prompt(tokenizer)
    start = time.perf_counter()
    responses = list(stream_generate(model, tokenizer, prompt, max_tokens=20))
    assert time.perf_counter() - start < 5  # ~20 ms in practice; generous for slow CI

    # The model never emits EOS, so every call runs to max_tokens.
    assert len(responses) == 20
    assert all(isinstance(r, GenerationResponse) for r in responses)
    assert [r.generation_tokens for r in responses] == list(range(1, 21))
    assert [r.finish_reason for r in responses] == [None] * 19 + ["length"]
    last = responses[-1]
    assert last.prompt_tokens == len(prompt)
    assert last.prompt_tps > 0 and last.generation_tps > 0 and last.peak_memory >= 0
    assert not last.from_draft

    # Streamed segments add up to the decoded tokens, all printable ASCII.
    text = "".join(r.text for r in responses)
    assert text == tokenizer.decode([r.token for r in responses])
    assert text.strip() and all(ch.isprintable() or ch in "\n\t" for ch in text) and text.isascii()

    # Greedy decoding of random weights is still deterministic.
    again = list(stream_generate(model, tokenizer, prompt, max_tokens=20))
    assert [r.token for r in again] == [r.token for r in responses]


def test_eos_bias_ends_the_reply(cache_root: Path) -> None:
    model, tokenizer = mlx_lm.load(str(tiny_model_dir(cache_root, eos_bias=True)))
    for text in ("hi", "What is the capital of France?"):
        responses = list(stream_generate(model, tokenizer, _chat_prompt(tokenizer, text), max_tokens=20))
        assert responses[-1].finish_reason == "stop"
        assert responses[-1].token == IM_END_ID
        assert "".join(r.text for r in responses).strip()  # one word, then EOS


def test_same_seed_gives_identical_files(model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    assert {name: _sha256(p) for name, p in tiny_model_files(again).items()} == {
        name: _sha256(p) for name, p in tiny_model_files(model_dir).items()
    }

    other = build_tiny_model(tmp_path / "other", seed=1)
    assert _sha256(other / "model.safetensors") != _sha256(model_dir / "model.safetensors")
    assert _sha256(other / "tokenizer.json") == _sha256(model_dir / "tokenizer.json")


def test_quantized_variant_loads_and_generates(cache_root: Path, model_dir: Path) -> None:
    path = tiny_model_dir(cache_root, quantize=True)
    config = json.loads((path / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    assert config["quantization_config"] == config["quantization"]

    model, tokenizer = mlx_lm.load(str(path))
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert model.model.layers[0].self_attn.q_proj.bits == 4
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
    responses = list(stream_generate(model, tokenizer, _chat_prompt(tokenizer), max_tokens=10))
    assert len(responses) == 10 and responses[-1].finish_reason == "length"
    float_size = (model_dir / "model.safetensors").stat().st_size
    assert (path / "model.safetensors").stat().st_size < 0.6 * float_size


def test_tiny_model_dir_builds_once_and_repairs(cache_root: Path, model_dir: Path) -> None:
    mtime = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_dir(cache_root) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == mtime

    # A dir missing files (say, an interrupted copy) is rebuilt, not trusted.
    broken = tiny_model_dir(cache_root, seed=7)
    (broken / "tokenizer.json").unlink()
    assert tiny_model_dir(cache_root, seed=7) == broken
    assert sorted(tiny_model_files(broken)) == sorted(MODEL_FILES)
    # No temp dirs are left behind.
    assert not [p for p in cache_root.iterdir() if p.name.startswith(".")]
