"""Export a PEFT LoRA adapter as a GGUF LoRA that llama.cpp and Ollama load beside the base GGUF.

The Proposer model is served by Ollama, which applies a LoRA given as a GGUF file
(`ADAPTER ./adapter.gguf` in a Modelfile). The file follows llama.cpp's own converter
(`convert_lora_to_gguf.py`): `general.type=adapter`, `adapter.type=lora`, `adapter.lora.alpha`,
and for every adapted base tensor `<gguf name>.weight.lora_a` (r x in) and `.lora_b` (out x r).
llama.cpp scales each pair by alpha / r (r read from lora_b), or by 1 when alpha is 0.

Llama-family GGUFs store q_proj/k_proj with their rows permuted for llama.cpp's rotary layout
(transformers un-permutes them when it loads a GGUF), so the same permutation is applied to the
rows of lora_b there; lora_a acts on the input side and stays as it is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
GGUF_NAME = "adapter.gguf"
MODELFILE_NAME = "Modelfile"

# transformers model_type -> (gguf MODEL_ARCH member, whether llama.cpp permutes q/k rows).
MODEL_TYPES: dict[str, tuple[str, bool]] = {
    "llama": ("LLAMA", True),  # SmolLM2, Llama 3.x
    "mistral": ("LLAMA", True),  # llama.cpp converts Mistral as LLAMA, permutation included
    "qwen2": ("QWEN2", False),
    "qwen3": ("QWEN3", False),
    "gemma": ("GEMMA", False),
    "gemma2": ("GEMMA2", False),
    "gemma3": ("GEMMA3", False),
    "gemma3_text": ("GEMMA3", False),
}

# adapter_config.json settings whose effect llama.cpp's plain LoRA cannot reproduce.
_UNSUPPORTED_SETTINGS: dict[str, str] = {
    "use_dora": "DoRA adapters (use_dora) need a magnitude vector llama.cpp does not apply",
    "modules_to_save": "modules_to_save stores whole trained layers, not LoRA pairs",
    "trainable_token_indices": "trained token embeddings are not LoRA pairs",
    "alpha_pattern": "per-module alpha (alpha_pattern) is not exported",
    "target_parameters": "LoRA on raw parameters (target_parameters) is not exported",
    "layer_replication": "layer_replication changes the base model's layer layout",
    "alora_invocation_tokens": "activated LoRA (aLoRA) is not exported",
    "lora_bias": "lora_bias adds a bias to lora_B that llama.cpp does not apply",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D-style) weights are not exported",
}

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<side>[AB])(?:\.[^.]+)?\.weight$")
# The language model's blocks, also when nested in a multimodal model (Gemma 3, Granite).
_LAYER_KEY = re.compile(
    r"^(?:model\.)?(?:language_model\.)?(?:model\.)?layers\.(?P<bid>\d+)\.(?P<rest>.+)$"
)


# (GGUF base tensor name, lora_a (r x in), lora_b (out x r)), in llama.cpp's layout.
LoraTensors = list[tuple[str, np.ndarray, np.ndarray]]


class GGUFExportError(ValueError):
    """The adapter or base model cannot be exported; the message says why and what to do."""


@dataclass(frozen=True)
class BaseModel:
    """What the export needs from the base model's config.json."""

    model_type: str
    arch: Any  # gguf.MODEL_ARCH
    permute_qk: bool
    n_blocks: int
    n_head: int
    n_head_kv: int
    tied_embeddings: bool


@dataclass(frozen=True)
class LoraPair:
    a: np.ndarray  # (r, in_features)
    b: np.ndarray  # (out_features, r)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise GGUFExportError(f"{what}: {path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise GGUFExportError(f"{what}: {path} must hold a JSON object")
    return data


def read_base_model(base_model_dir: Path) -> BaseModel:
    """Map the base model's config.json onto a gguf architecture; unknown ones are refused."""
    import gguf

    config = _read_json(base_model_dir / "config.json", "base model config")
    text = config.get("text_config") or config  # multimodal Gemma 3 nests the language model
    model_type = str(config.get("model_type", ""))
    if model_type not in MODEL_TYPES:
        raise GGUFExportError(
            f"base model architecture {model_type!r} ({base_model_dir}) is not supported for "
            f"GGUF LoRA export; supported: {', '.join(sorted(MODEL_TYPES))}"
        )
    arch_name, permute = MODEL_TYPES[model_type]
    try:
        n_head = int(text["num_attention_heads"])
        return BaseModel(
            model_type=model_type,
            arch=gguf.MODEL_ARCH[arch_name],
            permute_qk=permute,
            n_blocks=int(text["num_hidden_layers"]),
            n_head=n_head,
            n_head_kv=int(text.get("num_key_value_heads") or n_head),
            tied_embeddings=bool(
                config.get("tie_word_embeddings", text.get("tie_word_embeddings"))
            ),
        )
    except KeyError as exc:
        raise GGUFExportError(f"base model config {base_model_dir} lacks {exc}") from exc


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """Load adapter_config.json and refuse the PEFT features llama.cpp's LoRA cannot express."""
    config = _read_json(adapter_dir / ADAPTER_CONFIG, "adapter config")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise GGUFExportError(f"adapter {adapter_dir} is {config['peft_type']}, not a LoRA")
    for key, why in _UNSUPPORTED_SETTINGS.items():
        if config.get(key):
            raise GGUFExportError(
                f"adapter {adapter_dir} cannot be exported to GGUF: {why} ({key}={config[key]!r});"
                " retrain without it or merge the adapter into the base model instead"
            )
    if config.get("bias", "none") != "none":
        raise GGUFExportError(
            f"adapter {adapter_dir} trains biases (bias={config['bias']!r}); llama.cpp LoRA "
            "carries no bias: retrain with bias='none'"
        )
    if not isinstance(config.get("lora_alpha"), int | float) or config["lora_alpha"] <= 0:
        raise GGUFExportError(f"adapter {adapter_dir} has no positive lora_alpha")
    return config


def load_lora_pairs(adapter_dir: Path) -> dict[str, LoraPair]:
    """Read lora_A/lora_B per adapted module as float32 (the file may hold f32, f16 or bf16)."""
    path = adapter_dir / ADAPTER_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"adapter weights: {path} does not exist")
    from safetensors.torch import load_file  # torch: numpy has no bfloat16

    halves: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in load_file(str(path), device="cpu").items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise GGUFExportError(
                f"adapter tensor {key!r} is not a lora_A/lora_B weight (embedding LoRA, "
                "modules_to_save or a bias?); only linear-layer LoRA can be exported"
            )
        matrix = tensor.float().numpy()
        if matrix.ndim != 2:
            raise GGUFExportError(f"adapter tensor {key!r} has shape {tuple(matrix.shape)}")
        halves.setdefault(match["module"], {})[match["side"]] = matrix
    if not halves:
        raise GGUFExportError(f"adapter weights {path} hold no LoRA tensors")
    pairs: dict[str, LoraPair] = {}
    for module, sides in halves.items():
        if set(sides) != {"A", "B"} or sides["A"].shape[0] != sides["B"].shape[1]:
            raise GGUFExportError(f"adapter module {module!r} lacks a matching lora_A/lora_B")
        pairs[module] = LoraPair(a=sides["A"], b=sides["B"])
    return pairs


def _hf_tensor_name(module: str) -> str:
    """PEFT module path -> the base checkpoint's tensor name that gguf's map knows."""
    name = module.removeprefix("base_model.model.")
    layer = _LAYER_KEY.match(name)
    if layer is not None:
        return f"model.layers.{layer['bid']}.{layer['rest']}.weight"
    return f"{name}.weight"


def gguf_tensor_name(module: str, base: BaseModel, name_map: Any) -> str:
    """The GGUF base tensor an adapted module patches, e.g. `blk.0.attn_q.weight`."""
    hf_name = _hf_tensor_name(module)
    if hf_name == "lm_head.weight" and base.tied_embeddings:
        raise GGUFExportError(
            "the adapter targets lm_head, but the base model ties it to the token embeddings; "
            "llama.cpp has no separate output tensor to patch: retrain without lm_head"
        )
    name = name_map.get_name(hf_name, try_suffixes=(".weight",))
    if name is None:
        raise GGUFExportError(
            f"adapter module {module!r} has no counterpart in llama.cpp's "
            f"{base.model_type} tensor layout; retrain targeting the linear layers only"
        )
    return name


def permute_rows(b: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (convert_hf_to_gguf `LlamaModel.permute`)."""
    rows = b.shape[0]
    if rows % (2 * n_head):
        raise GGUFExportError(f"cannot permute {rows} rows over {n_head} heads")
    return b.reshape(n_head, 2, rows // n_head // 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


def _scales(config: dict[str, Any], pairs: dict[str, LoraPair]) -> tuple[float, dict[str, float]]:
    """Pick the GGUF alpha and the factor folded into each lora_b so llama.cpp scales as PEFT.

    PEFT scales by alpha/r (alpha/sqrt(r) with rsLoRA; r per module under rank_pattern);
    llama.cpp by gguf_alpha/r. One gguf_alpha fits when alpha_peft_scale * r is the same for all
    modules; otherwise each scale is folded into lora_b and alpha 0 (= scale 1) is written.
    """
    alpha = float(config["lora_alpha"])
    rs_lora = bool(config.get("use_rslora"))
    scale = {
        m: alpha / (math.sqrt(p.a.shape[0]) if rs_lora else p.a.shape[0]) for m, p in pairs.items()
    }
    wanted = {scale[m] * p.a.shape[0] for m, p in pairs.items()}
    if max(wanted) - min(wanted) <= 1e-6 * max(wanted):
        return next(iter(wanted)), {m: 1.0 for m in pairs}
    return 0.0, scale


def build_tensors(
    pairs: dict[str, LoraPair], base: BaseModel, config: dict[str, Any]
) -> tuple[float, LoraTensors]:
    """The GGUF alpha and the tensors, renamed, scaled and permuted for llama.cpp."""
    import gguf

    name_map = gguf.get_tensor_name_map(base.arch, base.n_blocks)
    alpha, folds = _scales(config, pairs)
    out: LoraTensors = []
    for module in sorted(pairs):
        name = gguf_tensor_name(module, base, name_map)
        a, b = pairs[module].a, pairs[module].b * folds[module]
        if base.permute_qk and name.endswith((".attn_q.weight", ".attn_k.weight")):
            heads = base.n_head if name.endswith(".attn_q.weight") else base.n_head_kv
            b = permute_rows(b, heads)
        out.append((name, a, b))
    if len({name for name, _, _ in out}) != len(out):
        raise GGUFExportError("two adapter modules map onto the same GGUF tensor")
    return alpha, out


def write_gguf(
    path: Path, base: BaseModel, alpha: float, tensors: LoraTensors, *, name: str, dtype: str
) -> None:
    """One GGUF adapter file as llama.cpp's convert_lora_to_gguf.py writes it."""
    import gguf

    np_type = {"f32": np.float32, "f16": np.float16}[dtype]
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[base.arch])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(name)
    for tensor_name, a, b in tensors:
        writer.add_tensor(f"{tensor_name}.lora_a", np.ascontiguousarray(a, dtype=np_type))
        writer.add_tensor(f"{tensor_name}.lora_b", np.ascontiguousarray(b, dtype=np_type))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _arch_name(base: BaseModel) -> str:
    import gguf

    return gguf.MODEL_ARCH_NAMES[base.arch]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _publish(staging: Path, out_dir: Path) -> None:
    """Swap `staging` in as `out_dir`; an older export is moved aside first, then deleted."""
    old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
    had_old = out_dir.exists()
    if had_old:
        os.rename(out_dir, old)
    try:
        os.rename(staging, out_dir)
    except OSError:
        if had_old:
            os.rename(old, out_dir)
        raise
    if had_old:
        shutil.rmtree(old, ignore_errors=True)


def export_adapter_gguf(
    adapter_dir: Path, base_model_dir: Path, out_dir: Path, *, ollama_base: str, dtype: str = "f32"
) -> dict[str, Any]:
    """Write `out_dir/adapter.gguf` and `out_dir/Modelfile` (FROM ollama_base, ADAPTER ...).

    Everything is written into a temp folder beside `out_dir` and renamed into place, so a
    failed export leaves no partial folder and an older export stays until the new one is whole.
    """
    if dtype not in ("f32", "f16"):
        raise GGUFExportError(f"dtype must be 'f32' or 'f16', not {dtype!r}")
    if not ollama_base.strip() or "\n" in ollama_base:
        raise GGUFExportError("ollama_base must be one Ollama model tag, e.g. 'smollm2:135m'")
    adapter_dir, base_model_dir, out_dir = Path(adapter_dir), Path(base_model_dir), Path(out_dir)
    base = read_base_model(base_model_dir)
    config = read_adapter_config(adapter_dir)
    alpha, tensors = build_tensors(load_lora_pairs(adapter_dir), base, config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        write_gguf(staging / GGUF_NAME, base, alpha, tensors, name=adapter_dir.name, dtype=dtype)
        modelfile = f"FROM {ollama_base.strip()}\nADAPTER ./{GGUF_NAME}\n"
        (staging / MODELFILE_NAME).write_text(modelfile, encoding="utf-8")
        sha, size = _sha256(staging / GGUF_NAME), (staging / GGUF_NAME).stat().st_size
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {
        "path": str(out_dir / GGUF_NAME),
        "modelfile": str(out_dir / MODELFILE_NAME),
        "sha256": sha,
        "sizeBytes": size,
        "tensors": 2 * len(tensors),
        "arch": _arch_name(base),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.gguf_export",
        description="Export a PEFT LoRA adapter as a GGUF LoRA plus an Ollama Modelfile.",
    )
    parser.add_argument("adapter_dir", type=Path)
    parser.add_argument("base_model_dir", type=Path, help="the base model folder (config.json)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--ollama-base", required=True, help="Ollama tag for FROM, e.g. qwen3:8b")
    parser.add_argument("--dtype", choices=("f32", "f16"), default="f32")
    args = parser.parse_args(argv)
    try:
        result = export_adapter_gguf(
            args.adapter_dir,
            args.base_model_dir,
            args.out_dir,
            ollama_base=args.ollama_base,
            dtype=args.dtype,
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
