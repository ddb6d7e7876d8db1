"""Benchmark models, generated here so `make bench` needs no network and no /work/shared.

* Chat models: random weights with real architectures' shapes (SmolLM2-135M, Qwen2.5-0.5B), 4-bit quantized
  (group 32, 8-bit embedding, float32 scales) as the mlx-community conversions are, with the tiny test
  tokenizer (400 tokens). Per-token compute depends on the shape only, so they run at the real models' speed.
  The logits are steered so greedy decoding only ever picks printable tokens the tokenizer knows and never
  EOS: every generation runs to max_tokens on every side, and every token streams as visible text.
* Download models: a ~1 GB safetensors file with Qwen2.5-0.5B's bf16 tensor names and shapes (random bytes
  as data: nobody loads it, the product only checks the config and the file list), and a repo of 200 small
  safetensors shards. Both carry a config.json and tokenizer, so the product's MLX check passes.

Everything is built once under var/bench/models/ and reused (a stamp file names the builder version).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Bump when the generated files change, so cached builds are redone.
BUILDER_VERSION = 2
_STAMP = ".bench-model"
_QUANT_GROUP = 32
# Logit penalty for tokens the model must never emit (see _steer).
_PENALTY = 100.0
_BIAS_DIM = 0


@dataclass(frozen=True)
class Shape:
    """The parts of a config.json that fix per-token compute."""

    name: str
    model_type: str
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


SMOLLM2_135M = Shape(
    name="SmolLM2-135M",
    model_type="llama",
    architecture="LlamaForCausalLM",
    hidden_size=576,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    intermediate_size=1536,
    vocab_size=49152,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    max_position_embeddings=8192,
)
QWEN25_05B = Shape(
    name="Qwen2.5-0.5B",
    model_type="qwen2",
    architecture="Qwen2ForCausalLM",
    hidden_size=896,
    num_layers=24,
    num_heads=14,
    num_kv_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=32768,
)
# The fast model: small enough to make hundreds of tokens/s on a laptop CPU, where every per-request and
# per-token cost of the product shows (a 10 tokens/s model hides them). Same tokenizer and steering.
TINY = Shape(
    name="tiny",
    model_type="llama",
    architecture="LlamaForCausalLM",
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=64,
    vocab_size=1024,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    max_position_embeddings=4096,
)
SHAPES = {s.name: s for s in (SMOLLM2_135M, QWEN25_05B, TINY)}


def config_for(shape: Shape, tokenizer_ids: dict[str, int], *, torch_dtype: str) -> dict[str, Any]:
    return {
        "architectures": [shape.architecture],
        "attention_bias": shape.model_type == "qwen2",
        "bos_token_id": tokenizer_ids["bos"],
        "eos_token_id": tokenizer_ids["eos"],
        "pad_token_id": tokenizer_ids["pad"],
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "max_position_embeddings": shape.max_position_embeddings,
        "model_type": shape.model_type,
        "num_attention_heads": shape.num_heads,
        "num_hidden_layers": shape.num_layers,
        "num_key_value_heads": shape.num_kv_heads,
        "rms_norm_eps": shape.rms_norm_eps,
        "rope_theta": shape.rope_theta,
        "rope_traditional": False,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "torch_dtype": torch_dtype,
        "use_cache": True,
        "vocab_size": shape.vocab_size,
    }


# ----------------------------------------------------------------------------- caching


def _cached(dest: Path, key: str, build: Callable[[Path], None]) -> Path:
    """Build into a temp dir beside dest and rename it into place, unless dest already holds `key`."""
    stamp = dest / _STAMP
    if stamp.is_file() and stamp.read_text().strip() == key:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        build(tmp)
        (tmp / _STAMP).write_text(key + "\n")
        os.chmod(tmp, 0o755)
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def model_files(model_dir: Path) -> dict[str, Path]:
    """Repo-relative path -> file, for publishing a built model to the local hub."""
    return {
        p.relative_to(model_dir).as_posix(): p
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and p.name != _STAMP
    }


# ----------------------------------------------------------------------------- tokenizer


def _tokenizer_files(dest: Path) -> dict[str, int]:
    """Copy the tiny test tokenizer (trained by devkit.tinymodel) into dest; return its special ids.

    Only its public builder is used: a throwaway two-layer model is built and its tokenizer files kept."""
    from devkit import tinymodel

    with tempfile.TemporaryDirectory() as tmp:
        tinymodel.build_tiny_model(Path(tmp))
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(Path(tmp) / name, dest / name)
    (dest / "generation_config.json").write_text(
        json.dumps({"bos_token_id": tinymodel.IM_START_ID, "eos_token_id": tinymodel.IM_END_ID}) + "\n"
    )
    return {"bos": tinymodel.IM_START_ID, "eos": tinymodel.IM_END_ID, "pad": tinymodel.ENDOFTEXT_ID}


def _allowed_token_ids(tokenizer_json: Path) -> list[int]:
    """Ids the steered model may emit: printable ASCII byte-level tokens with at least one visible byte."""
    data = json.loads(tokenizer_json.read_text())
    special = {t["id"] for t in data.get("added_tokens", [])}
    byte_of = _unicode_to_byte()
    allowed = []
    for token, token_id in data["model"]["vocab"].items():
        if token_id in special:
            continue
        raw = [byte_of.get(ch) for ch in token]
        if all(b is not None and 32 <= b < 127 for b in raw) and any(b != 32 for b in raw):
            allowed.append(token_id)
    return sorted(allowed)


def _unicode_to_byte() -> dict[str, int]:
    # GPT-2's byte-level alphabet: printable bytes map to themselves, the rest to U+0100 onwards.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes, strict=True)}


# ----------------------------------------------------------------------------- chat models


def _steer(weights: dict[str, Any], allowed: list[int]) -> None:
    """Make every token outside `allowed` score -_PENALTY * x, with x > 0, on every step.

    Dim _BIAS_DIM of every embedding is 1 and no layer writes to it (its rows of o_proj and down_proj are
    zero), so after the final RMSNorm it holds the same positive value x at every position. A banned
    lm_head row [-_PENALTY, 0, ...] then scores -_PENALTY * x, while allowed rows keep their random N(0, 1)
    logits. At 8 bits a row of one -P and zeros quantizes exactly. The output is untied from the embedding
    for this (the special and newline tokens are model inputs, so their embeddings must stay normal): the
    lm_head matmul costs what the tied one does."""
    import numpy as np

    embed = np.array(weights["model.embed_tokens.weight"])
    embed[:, _BIAS_DIM] = 1.0
    weights["model.embed_tokens.weight"] = embed
    head = np.array(weights["lm_head.weight"])
    mask = np.zeros(head.shape[0], dtype=bool)
    mask[allowed] = True
    head[:, _BIAS_DIM] = 0.0
    head[~mask] = 0.0
    head[~mask, _BIAS_DIM] = -_PENALTY
    weights["lm_head.weight"] = head
    for name in list(weights):
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            projection = np.array(weights[name])
            projection[_BIAS_DIM, :] = 0.0
            weights[name] = projection


def _build_chat_model(dest: Path, shape: Shape, seed: int) -> None:
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm.utils import MODEL_REMAPPING

    ids = _tokenizer_files(dest)
    config = config_for(shape, ids, torch_dtype="float32")
    config["tie_word_embeddings"] = False  # see _steer
    arch = importlib.import_module(f"mlx_lm.models.{MODEL_REMAPPING.get(shape.model_type, shape.model_type)}")
    model = arch.Model(arch.ModelArgs.from_dict(config))

    # numpy's PCG64, not mx.random: the bytes do not depend on the MLX version. N(0, 1/fan_in) keeps
    # activations O(1) through the layers; the embedding is N(0, 1), as in devkit.tinymodel.
    rng = np.random.default_rng(seed)
    weights: dict[str, Any] = {}
    for name, param in sorted(tree_flatten(model.parameters())):
        if name.endswith("norm.weight"):
            weights[name] = np.ones(param.shape, dtype=np.float32)
        elif name.endswith(".bias"):
            weights[name] = np.zeros(param.shape, dtype=np.float32)
        elif name.endswith("embed_tokens.weight"):
            weights[name] = rng.standard_normal(param.shape, dtype=np.float32)
        else:
            weights[name] = rng.standard_normal(param.shape, dtype=np.float32) * np.float32(
                param.shape[-1] ** -0.5
            )
    _steer(weights, _allowed_token_ids(dest / "tokenizer.json"))
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()], strict=True)
    del weights

    quantization: dict[str, Any] = {"group_size": _QUANT_GROUP, "bits": 4, "mode": "affine"}

    def predicate(path: str, module: nn.Module) -> bool | dict[str, int]:
        if not hasattr(module, "to_quantized") or module.weight.shape[-1] % _QUANT_GROUP:
            return False
        if path in ("model.embed_tokens", "lm_head"):
            quantization[path] = {"bits": 8, "group_size": _QUANT_GROUP}
            return quantization[path]
        return True

    # Weights are float32, so the scales and biases quantize() makes are float32 too: the fast path on CPU.
    nn.quantize(model, group_size=_QUANT_GROUP, bits=4, class_predicate=predicate)
    config["quantization"] = quantization
    config["quantization_config"] = json.loads(json.dumps(quantization))
    params = dict(sorted(tree_flatten(model.parameters())))
    mx.eval(params)
    mx.save_safetensors(str(dest / "model.safetensors"), params, metadata={"format": "mlx"})
    (dest / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (dest / "README.md").write_text(
        f"# Random-weight {shape.name}-shaped model (MLX, 4-bit, float32 scales)\n\n"
        "Generated by `make bench`: gibberish at the real model's speed.\n"
    )


def chat_model(root: Path, shape: Shape = SMOLLM2_135M, seed: int = 0) -> Path:
    """A steered random-weight 4-bit model of `shape` under root (built once)."""
    key = f"chat-v{BUILDER_VERSION}-{shape.name}-s{seed}"
    return _cached(root / f"{shape.name}-random-4bit", key, lambda d: _build_chat_model(d, shape, seed))


# ----------------------------------------------------------------------------- download models


def _safetensors_header(tensors: list[tuple[str, str, list[int], int]]) -> bytes:
    """The 8-byte length + JSON header for (name, dtype, shape, nbytes) laid out back to back."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, nbytes in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(raw)) + raw


def _write_random(f: Any, nbytes: int) -> None:
    chunk = 8 * 2**20
    while nbytes > 0:
        n = min(chunk, nbytes)
        f.write(os.urandom(n))
        nbytes -= n


def _shape_tensors(shape: Shape) -> list[tuple[str, str, list[int], int]]:
    """Every parameter of the mlx-lm implementation of `shape`, as bf16, without allocating any."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import MODEL_REMAPPING

    config = config_for(shape, {"bos": 1, "eos": 2, "pad": 0}, torch_dtype="bfloat16")
    arch = importlib.import_module(f"mlx_lm.models.{MODEL_REMAPPING.get(shape.model_type, shape.model_type)}")
    model = arch.Model(arch.ModelArgs.from_dict(config))  # lazy arrays: shapes only, nothing evaluated
    out = []
    for name, param in sorted(tree_flatten(model.parameters())):
        count = 1
        for dim in param.shape:
            count *= dim
        out.append((name, "BF16", list(param.shape), 2 * count))
    return out


def _build_big_model(dest: Path, shape: Shape) -> None:
    ids = _tokenizer_files(dest)
    (dest / "config.json").write_text(
        json.dumps(config_for(shape, ids, torch_dtype="bfloat16"), indent=2, sort_keys=True) + "\n"
    )
    tensors = _shape_tensors(shape)
    with open(dest / "model.safetensors", "wb") as f:
        f.write(_safetensors_header(tensors))
        _write_random(f, sum(t[3] for t in tensors))


def big_model(root: Path, shape: Shape = QWEN25_05B) -> Path:
    """One ~1 GB safetensors file (Qwen2.5-0.5B in bf16 is 988 MB) plus config and tokenizer."""
    key = f"big-v{BUILDER_VERSION}-{shape.name}"
    return _cached(root / f"{shape.name}-bf16-random-bytes", key, lambda d: _build_big_model(d, shape))


def _build_sharded_model(dest: Path, shape: Shape, files: int, file_size: int) -> None:
    ids = _tokenizer_files(dest)
    (dest / "config.json").write_text(
        json.dumps(config_for(shape, ids, torch_dtype="bfloat16"), indent=2, sort_keys=True) + "\n"
    )
    weight_map = {}
    for index in range(1, files + 1):
        name = f"model-{index:05d}-of-{files:05d}.safetensors"
        tensor = f"shard.{index}.weight"
        nbytes = file_size - len(_safetensors_header([(tensor, "U8", [file_size], file_size)]))
        with open(dest / name, "wb") as f:
            f.write(_safetensors_header([(tensor, "U8", [nbytes], nbytes)]))
            _write_random(f, nbytes)
        weight_map[tensor] = name
    (dest / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": files * file_size}, "weight_map": weight_map}, indent=2) + "\n"
    )


def sharded_model(root: Path, files: int = 200, file_size: int = 50_000) -> Path:
    """Many small files: `files` safetensors shards of ~file_size bytes each, plus config and tokenizer."""
    key = f"shards-v{BUILDER_VERSION}-{files}x{file_size}"
    return _cached(
        root / f"many-small-{files}x{file_size // 1000}kB",
        key,
        lambda d: _build_sharded_model(d, SMOLLM2_135M, files, file_size),
    )
