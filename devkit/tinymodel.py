"""A tiny random-weight MLX chat model, laid out like a Hugging Face Hub MLX repo.

Tests need a model that ``mlx_lm.load`` accepts and that generates in milliseconds,
without network access or multi-megabyte downloads. ``build_tiny_model`` writes one
from scratch: a byte-level BPE tokenizer trained on a few sentences embedded below,
a two-layer llama with seeded random weights and the usual Hub metadata files.

Everything is deterministic (numpy's PCG64 for the weights, no timestamps), so the
same arguments give byte-identical files and tests may rely on file hashes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.utils import MODEL_REMAPPING
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# Bump whenever the generated files change, so cached builds (tiny_model_dir) are redone.
BUILDER_VERSION = 1

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Order fixes the ids: 0, 1, 2 (as in SmolLM2), so eos/bos ids are stable constants.
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = 0, 1, 2

# ChatML, as used by SmolLM2/Qwen: any roles, optional generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The files a Hub MLX repo of this model holds, in publishing order.
MODEL_FILES = (
    "README.md",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)

_VOCAB_TARGET = 400
_NUM_HEADS = 4
_NUM_KV_HEADS = 2
_QUANT_GROUP_SIZE = 32
_QUANT_BITS = 4
# Hidden dims reserved by _shape_logits, and the logit scale it works with.
_FLAG_DIM = 0
_BIAS_DIM = 1
_PENALTY = 30.0
_BOOST = 30.0

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}

# Training text for the tokenizer: enough variety for a few hundred merges, and
# covering the words tests tend to type ("hi", "hello", questions, digits).
_CORPUS = (
    "Hello there! How are you today?",
    "hi, hello, hey: a greeting is a good way to start a chat.",
    "The quick brown fox jumps over the lazy dog.",
    "MLX is an array framework for machine learning on Apple silicon.",
    "This is a tiny language model with random weights, made for tests.",
    "It does not know anything, but it loads and generates very quickly.",
    "What is the capital of France? The capital of France is Paris.",
    "Can you write a short poem about the sea and the sky?",
    "Please summarize the following paragraph in one sentence.",
    "The weather is sunny with a light breeze from the west.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1000 2024 3.14",
    "Python is a programming language; Django is a web framework.",
    "The dashboard pulls models from the Hugging Face Hub.",
    "You are a helpful assistant. Answer briefly and politely.",
    "Thank you very much! You're welcome, have a nice day.",
    "Once upon a time, there was a little robot who loved to read.",
    "Tokens are pieces of words; the tokenizer splits text into tokens.",
    "A user asks a question and the assistant gives an answer.",
    "The system message sets the behaviour of the assistant.",
    "Why is the sky blue? Because air scatters blue light the most.",
    "Good morning, good afternoon, good evening and good night.",
    "Streaming sends the reply one token at a time to the browser.",
    "Lists: apples, bananas, cherries, dates, and elderberries.",
    "def main():\n    print('hello world')\n    return 0",
    '{"role": "user", "content": "hi"}',
    "Mistakes happen; try again, and read the error message carefully.",
    "The cache keeps downloaded files so they are not fetched twice.",
    "Quantization stores weights in four bits to save memory.",
    "Where are my keys? They are on the kitchen table, next to the lamp.",
    "Yes. No. Maybe. Sure! Of course. I don't know.",
    "She sells sea shells by the sea shore.",
    "Every model has a configuration, weights and a tokenizer.",
)


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, which byte-level BPE tokens are spelled in."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


_UNICODE_TO_BYTE = {ch: b for b, ch in _byte_to_unicode().items()}


@functools.cache
def _tokenizer_json() -> str:
    """Train the byte-level BPE once per process; the result only depends on _CORPUS."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()  # mlx-lm picks its BPE streaming detokenizer for this
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_TARGET,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 bytes, so any text (emoji, accents) encodes without an unknown token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer)
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [ENDOFTEXT_ID, IM_START_ID, IM_END_ID]
    return tokenizer.to_str(pretty=True)


def _vocab_size() -> int:
    return Tokenizer.from_str(_tokenizer_json()).get_vocab_size(with_added_tokens=True)


def _model_config(
    *, model_type: str, hidden_size: int, num_layers: int, max_position_embeddings: int
) -> dict[str, Any]:
    if hidden_size % (2 * _NUM_HEADS):
        raise ValueError(f"hidden_size must be a multiple of {2 * _NUM_HEADS} (even head_dim for RoPE)")
    return {
        "architectures": [_ARCHITECTURES.get(model_type, "LlamaForCausalLM")],
        "attention_bias": False,
        "bos_token_id": IM_START_ID,
        "eos_token_id": IM_END_ID,
        "head_dim": hidden_size // _NUM_HEADS,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "max_position_embeddings": max_position_embeddings,
        "mlp_bias": False,
        "model_type": model_type,
        "num_attention_heads": _NUM_HEADS,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": _NUM_KV_HEADS,
        "pad_token_id": ENDOFTEXT_ID,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "rope_traditional": False,
        # Untied, so the lm_head rows can be steered without touching inputs (_shape_logits).
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": _vocab_size(),
    }


def _random_weights(model: nn.Module, seed: int) -> dict[str, mx.array]:
    """Seeded weights for every parameter of ``model``, in sorted name order.

    numpy's PCG64 is used rather than mx.random so the bytes do not depend on the
    MLX version or device. Norms start at one and biases at zero, as in a fresh
    checkpoint; matrices are N(0, 1/fan_in) so activations stay O(1).
    """
    rng = np.random.default_rng(seed)
    weights = {}
    for name, param in sorted(tree_flatten(model.parameters())):
        if name.endswith("norm.weight"):
            value = np.ones(param.shape, dtype=np.float32)
        elif name.endswith(".bias"):
            value = np.zeros(param.shape, dtype=np.float32)
        elif name.endswith("embed_tokens.weight"):
            # Unit scale, so token identity outweighs the constant dims _shape_logits adds.
            value = rng.standard_normal(param.shape, dtype=np.float32)
        else:
            std = param.shape[-1] ** -0.5
            value = rng.standard_normal(param.shape, dtype=np.float32) * np.float32(std)
        weights[name] = mx.array(value)
    return weights


def _is_printable(token: str) -> bool:
    """Whether a (non-special) byte-level BPE token is printable ASCII, newline or tab."""
    return all(32 <= _UNICODE_TO_BYTE[ch] < 127 or _UNICODE_TO_BYTE[ch] in (9, 10) for ch in token)


def _shape_logits(weights: dict[str, mx.array], vocab: dict[str, int], *, eos_bias: bool) -> None:
    """Steer which tokens the random model can emit, using two reserved hidden dims.

    Dim _BIAS_DIM is 1.0 in every token embedding and dim _FLAG_DIM is 1.0 only
    for "word" tokens (printable, not pure whitespace). Zeroing those rows of every
    layer's output projection means no layer writes to them, so after the final
    RMSNorm both carry the same positive value x at word positions, and dim
    _FLAG_DIM carries 0 elsewhere. The untied lm_head then gets bias-like columns:

    * special tokens and bytes outside printable ASCII get -_PENALTY * x, so
      replies are readable text (no U+FFFD from split UTF-8, no <|im_start|>);
      <|im_end|> is among them, so generation always runs to max_tokens;
    * with eos_bias, <|im_end|> also gets +(_PENALTY + _BOOST) on the flag dim:
      net +_BOOST * x right after a word token, so the reply ends there.
    """
    embed = np.array(weights["model.embed_tokens.weight"])
    lm_head = np.array(weights["lm_head.weight"])
    word = np.zeros(embed.shape[0], dtype=np.float32)
    banned = np.zeros(embed.shape[0], dtype=bool)
    for token, token_id in vocab.items():
        # Special tokens are spelled in printable characters, so check them by id.
        if token in SPECIAL_TOKENS or not _is_printable(token):
            banned[token_id] = True
        elif token.strip("ĠĊĉ"):  # byte-level spelling of space, newline, tab
            word[token_id] = 1.0
    embed[:, _BIAS_DIM] = 1.0
    embed[:, _FLAG_DIM] = word
    lm_head[:, [_BIAS_DIM, _FLAG_DIM]] = 0.0
    # Banned rows are pure penalty; quantization then keeps them exact.
    lm_head[banned] = 0.0
    lm_head[banned, _BIAS_DIM] = -_PENALTY
    if eos_bias:
        lm_head[IM_END_ID, _FLAG_DIM] = _PENALTY + _BOOST
    weights["model.embed_tokens.weight"] = mx.array(embed)
    weights["lm_head.weight"] = mx.array(lm_head)
    for name in list(weights):
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            projection = np.array(weights[name])
            projection[[_BIAS_DIM, _FLAG_DIM], :] = 0.0
            weights[name] = mx.array(projection)


def _quantize(model: nn.Module) -> dict[str, Any]:
    """Quantize like ``mlx_lm.convert -q --q-group-size 32``; return the config block.

    The transformer layers get 4 bits; embed_tokens and lm_head keep 8 bits (listed
    per layer, as SmolLM2's mlx-community conversion does) so the steering columns
    of _shape_logits survive: at 4 bits their rounding noise rivals the penalty.
    """
    quantization: dict[str, Any] = {"group_size": _QUANT_GROUP_SIZE, "bits": _QUANT_BITS, "mode": "affine"}

    def predicate(path: str, module: nn.Module) -> bool | dict[str, int]:
        # Skip layers whose input dim is not a multiple of the group size, as mlx-lm does.
        if not hasattr(module, "to_quantized") or module.weight.shape[-1] % _QUANT_GROUP_SIZE:
            return False
        if path in ("model.embed_tokens", "lm_head"):
            quantization[path] = {"bits": 8, "group_size": _QUANT_GROUP_SIZE}
            return quantization[path]
        return True

    nn.quantize(model, group_size=_QUANT_GROUP_SIZE, bits=_QUANT_BITS, class_predicate=predicate)
    return quantization


def _tokenizer_config(max_position_embeddings: int) -> dict[str, Any]:
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(i): {
                "content": token,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, token in enumerate(SPECIAL_TOKENS)
        },
        "bos_token": IM_START,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": IM_END,
        "model_max_length": max_position_embeddings,
        "pad_token": ENDOFTEXT,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": ENDOFTEXT,
    }


def _model_card(config: dict[str, Any], *, seed: int, quantize: bool, eos_bias: bool) -> str:
    variant = "4-bit quantized (group size 32)" if quantize else "float32"
    eos_note = (
        "\nEOS bias: right after its first word token the model emits `<|im_end|>`.\n"
        if eos_bias
        else "\nIt never emits `<|im_end|>`, so generation always runs to `max_tokens`.\n"
    )
    return f"""---
library_name: mlx
license: apache-2.0
pipeline_tag: text-generation
tags:
- mlx
- test-fixture
---

# Tiny random {config["model_type"]} (MLX)

A {config["num_hidden_layers"]}-layer, hidden-size-{config["hidden_size"]} chat model with **random
weights** (seed {seed}, {variant}) for tests. It generates gibberish, fast.
{eos_note}
```python
from mlx_lm import load, generate

model, tokenizer = load("path/to/this/dir")
prompt = tokenizer.apply_chat_template([{{"role": "user", "content": "hi"}}], add_generation_prompt=True)
print(generate(model, tokenizer, prompt=prompt, max_tokens=20))
```
"""


def _write_json(path: Path, data: dict[str, Any]) -> None:
    # Sorted keys and a trailing newline: stable bytes for stable hashes.
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def build_tiny_model(
    dest: Path,
    *,
    seed: int = 0,
    model_type: str = "llama",
    hidden_size: int = 32,
    num_layers: int = 2,
    max_position_embeddings: int = 512,
    quantize: bool = False,
    eos_bias: bool = False,
) -> Path:
    """Write a random-weight MLX chat model into dest (created) and return dest.

    ``model_type`` may be any llama-shaped mlx-lm architecture ("llama", "mistral",
    "qwen2"). The model only emits printable ASCII text and never <|im_end|>, so
    generation always runs to max_tokens; with ``eos_bias`` it emits <|im_end|>
    right after its first word token instead (see ``_shape_logits``), so a reply
    to a ChatML generation prompt is one word, maybe after whitespace, then EOS.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = _model_config(
        model_type=model_type,
        hidden_size=hidden_size,
        num_layers=num_layers,
        max_position_embeddings=max_position_embeddings,
    )

    # Resolve the architecture the way mlx_lm.load will (e.g. mistral -> llama).
    arch = importlib.import_module(f"mlx_lm.models.{MODEL_REMAPPING.get(model_type, model_type)}")
    model = arch.Model(arch.ModelArgs.from_dict(config))
    weights = _random_weights(model, seed)
    tokenizer_json = _tokenizer_json()
    vocab = Tokenizer.from_str(tokenizer_json).get_vocab(with_added_tokens=True)
    _shape_logits(weights, vocab, eos_bias=eos_bias)
    model.load_weights(list(weights.items()), strict=True)
    if quantize:
        config["quantization"] = _quantize(model)
        # mlx-lm writes both; older loaders and the Hub UI read quantization_config.
        config["quantization_config"] = json.loads(json.dumps(config["quantization"]))

    params = dict(sorted(tree_flatten(model.parameters())))
    mx.eval(params)
    mx.save_safetensors(str(dest / "model.safetensors"), params, metadata={"format": "mlx"})

    _write_json(dest / "config.json", config)
    _write_json(
        dest / "generation_config.json",
        {"bos_token_id": IM_START_ID, "eos_token_id": IM_END_ID, "pad_token_id": ENDOFTEXT_ID},
    )
    (dest / "tokenizer.json").write_text(tokenizer_json + "\n", encoding="utf-8")
    _write_json(dest / "tokenizer_config.json", _tokenizer_config(max_position_embeddings))
    _write_json(
        dest / "special_tokens_map.json",
        {
            "additional_special_tokens": [IM_START, IM_END],
            "bos_token": IM_START,
            "eos_token": IM_END,
            "pad_token": ENDOFTEXT,
            "unk_token": ENDOFTEXT,
        },
    )
    (dest / "README.md").write_text(
        _model_card(config, seed=seed, quantize=quantize, eos_bias=eos_bias), encoding="utf-8"
    )
    return dest


def tiny_model_files(dest: Path) -> dict[str, Path]:
    """Map repo-relative path -> file for a built model, e.g. to publish to a local hub."""
    dest = Path(dest)
    return {name: dest / name for name in MODEL_FILES if (dest / name).is_file()}


def _is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in MODEL_FILES)


def tiny_model_dir(
    cache_root: Path,
    *,
    seed: int = 0,
    model_type: str = "llama",
    hidden_size: int = 32,
    num_layers: int = 2,
    max_position_embeddings: int = 512,
    quantize: bool = False,
    eos_bias: bool = False,
) -> Path:
    """Build the model once under cache_root (keyed by its parameters) and return its dir.

    Safe with pytest-xdist: each caller builds into its own temp dir and renames it
    into place; rename is atomic, so a finished dir is always complete and a loser of
    the race just discards its copy.
    """
    cache_root = Path(cache_root)
    key = (
        f"tiny-v{BUILDER_VERSION}-{model_type}-h{hidden_size}-l{num_layers}"
        f"-p{max_position_embeddings}-s{seed}{'-q4' if quantize else ''}{'-eos' if eos_bias else ''}"
    )
    final = cache_root / key
    if _is_complete(final):
        return final

    cache_root.mkdir(parents=True, exist_ok=True)
    if final.exists():
        # Left over from an interrupted run of an older layout: move it aside, not
        # rmtree in place, so a concurrent reader never sees it half-deleted.
        stale = Path(tempfile.mkdtemp(prefix=f".{key}-stale-", dir=cache_root))
        with contextlib.suppress(OSError):  # someone else already moved or replaced it
            os.rename(final, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)

    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_root))
    try:
        build_tiny_model(
            tmp,
            seed=seed,
            model_type=model_type,
            hidden_size=hidden_size,
            num_layers=num_layers,
            max_position_embeddings=max_position_embeddings,
            quantize=quantize,
            eos_bias=eos_bias,
        )
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the dir may be served or shared
        try:
            os.rename(tmp, final)
        except OSError:
            # Another worker won the race; its copy is byte-identical.
            if not _is_complete(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
