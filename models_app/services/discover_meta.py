"""What a Hub listing entry says about a model, read without any further Hub call: quantization, parameter
count, weight bytes and the base model its variants share. Pure functions over the listing's fields."""

from __future__ import annotations

import re
from typing import Any

# Bytes per element of each safetensors dtype (the Hub's `safetensors.parameters` counts elements per dtype).
DTYPE_BYTES = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
# Name suffixes of MLX conversions (mlx-community's naming): stripped to find the base model when the repo
# does not name it.
_VARIANT_SUFFIX = re.compile(
    r"(?:[-_.](?:\d+(?:\.\d+)?-?bits?|[0-9]bit|q[2-8](?:_k)?(?:_[ms])?|bf16|fp16|f16|fp32|f32|dwq|awq|gptq|"
    r"mxfp4|nvfp4|mlx|quantized|instruct-mlx))+$",
    re.IGNORECASE,
)
_BITS_TAG = re.compile(r"^(\d+)-?bits?$", re.IGNORECASE)
_BITS_NAME = re.compile(r"[-_.](\d)-?bits?(?:$|[-_.])", re.IGNORECASE)
_FLOAT_NAME = re.compile(r"[-_.](bf16|fp16|f16|fp32|f32)(?:$|[-_.])", re.IGNORECASE)


def quantization(config: dict[str, Any] | None, tags: list[str], repo_id: str) -> str:
    """ "4-bit", "6-bit DWQ", "bf16"... or "" when nothing says. The config's own quantization wins over tags,
    tags over the repo name."""
    name = repo_id.rsplit("/", 1)[-1]
    dwq = " DWQ" if "dwq" in name.lower() else ""
    quant = (config or {}).get("quantization") or (config or {}).get("quantization_config")
    if isinstance(quant, dict) and isinstance(quant.get("bits"), int):
        return f"{quant['bits']}-bit{dwq}"
    for tag in tags:
        if m := _BITS_TAG.match(tag):
            return f"{m[1]}-bit{dwq}"
    if m := _BITS_NAME.search(name):
        return f"{m[1]}-bit{dwq}"
    if m := _FLOAT_NAME.search(name):
        return m[1].lower()
    return dwq.strip()


def bits(quant: str) -> int | None:
    m = re.match(r"(\d+)-bit", quant)
    return int(m[1]) if m else None


def weight_bytes(safetensors: dict[str, Any] | None) -> int | None:
    """Bytes of the weights from the Hub's per-dtype element counts (exact for MLX's packed U32 weights)."""
    params = (safetensors or {}).get("parameters")
    if not isinstance(params, dict) or not params:
        return None
    try:
        return sum(int(n) * DTYPE_BYTES.get(str(dtype).upper(), 2) for dtype, n in params.items())
    except (TypeError, ValueError):
        return None


def parameter_count(safetensors: dict[str, Any] | None, quant_bits: int | None) -> int | None:
    """The model's parameters. Quantized MLX weights pack 32/bits values in each U32 element, so the Hub's
    total undercounts them; unpacked here (scales and biases are counted too: an estimate within a few %)."""
    params = (safetensors or {}).get("parameters")
    if not isinstance(params, dict) or not params:
        return None
    try:
        if quant_bits:
            packed = int(params.get("U32", 0))
            return packed * 32 // quant_bits + sum(int(n) for d, n in params.items() if d != "U32")
        return sum(int(n) for n in params.values())
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def base_model(card_data: Any, tags: list[str], repo_id: str) -> str:
    """The model a conversion was made from: the card's base_model, a `base_model:` tag, else the repo's name
    without its quantization suffix (so "org/Qwen-7B-4bit" and "org/Qwen-7B-8bit" meet)."""
    declared = _card_base(card_data)
    if declared:
        return declared
    # Tags: "base_model:quantized:Org/Name" (the relation) and "base_model:Org/Name".
    for tag in tags:
        if tag.startswith("base_model:"):
            value = tag.split(":")[-1]
            if "/" in value:
                return value
    name = repo_id.rsplit("/", 1)[-1]
    return _VARIANT_SUFFIX.sub("", name) or name


def _card_base(card_data: Any) -> str:
    value = card_data.get("base_model") if hasattr(card_data, "get") else None
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) and value.strip() else ""


def base_key(base: str) -> str:
    """Groups "Qwen/Qwen2.5-7B" and a conversion named "qwen2.5-7b" (no org) together."""
    return base.rsplit("/", 1)[-1].lower()
