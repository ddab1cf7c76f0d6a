"""GGUF LoRA export: layout read back with gguf's reader, bad input, atomic output; and the
proof (marked llama_cpp) that a real llama.cpp applies the exported adapter as PEFT does.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from worker import gguf_export
from worker.gguf_export import GGUFExportError, export_adapter_gguf, permute_rows

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# tiny_model: hidden 64, intermediate 128, 2 layers, 4 heads, 2 kv heads (head dim 16).
# PEFT module -> (GGUF name, out_features, in_features)
MODULES = {
    "self_attn.q_proj": ("attn_q", 64, 64),
    "self_attn.k_proj": ("attn_k", 32, 64),
    "self_attn.v_proj": ("attn_v", 32, 64),
    "self_attn.o_proj": ("attn_output", 64, 64),
    "mlp.gate_proj": ("ffn_gate", 128, 64),
    "mlp.up_proj": ("ffn_up", 128, 64),
    "mlp.down_proj": ("ffn_down", 64, 128),
}


def write_base_config(folder: Path, model_type: str = "llama", **extra: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    heads = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64}
    config = {"model_type": model_type, "num_hidden_layers": 2, **heads, **extra}
    (folder / "config.json").write_text(json.dumps({"tie_word_embeddings": True, **config}))
    return folder


def write_adapter(
    folder: Path,
    *,
    rank: int = 4,
    alpha: float = 8,
    dtype: str = "float32",
    ranks: dict[str, int] | None = None,
    prefix: str = "model.",
    extra_tensors: dict[str, object] | None = None,
    **config: object,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A PEFT-layout adapter written by hand: known values, any dtype, any config."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(7)
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for layer in range(2):
        for module, (gguf_name, out_features, in_features) in MODULES.items():
            r = (ranks or {}).get(module, rank)
            key = f"base_model.model.{prefix}layers.{layer}.{module}"
            a = torch.randn(r, in_features, generator=generator).to(getattr(torch, dtype))
            b = torch.randn(out_features, r, generator=generator).to(getattr(torch, dtype))
            tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = a, b
            values[f"blk.{layer}.{gguf_name}"] = (a.float().numpy(), b.float().numpy())
    tensors.update(extra_tensors or {})  # type: ignore[arg-type]
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    adapter_config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "bias": "none"}
    (folder / "adapter_config.json").write_text(json.dumps({**adapter_config, **config}))
    return values


def read_back(path: Path) -> tuple[dict[str, object], dict[str, object]]:
    """(fields, tensors by name) of a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {name: field.contents() for name, field in reader.fields.items()}
    return fields, {tensor.name: tensor for tensor in reader.tensors}


def matrix(tensor: object) -> np.ndarray:
    """A GGUF tensor as the numpy matrix that was written (rows = ggml ne[1])."""
    data = np.asarray(tensor.data, dtype=np.float32)  # type: ignore[attr-defined]
    ne = [int(n) for n in tensor.shape]  # type: ignore[attr-defined]
    return data.reshape(ne[1], ne[0])


def test_peft_adapter_exports_llama_layout(tiny_model: Path, tmp_path: Path) -> None:
    """A real PEFT save on the tiny Llama: names, shapes, types and metadata llama.cpp reads."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(tmp_path / "adapter")

    result = export_adapter_gguf(
        tmp_path / "adapter", tiny_model, tmp_path / "out", ollama_base="smollm2:135m"
    )

    gguf_path = tmp_path / "out" / "adapter.gguf"
    fields, tensors = read_back(gguf_path)
    assert fields["general.architecture"] == "llama"
    assert fields["general.type"] == "adapter"
    assert fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == pytest.approx(8.0)
    expected = {
        f"blk.{layer}.{name}.weight.lora_{side}"
        for layer in range(2)
        for name, _, _ in MODULES.values()
        for side in "ab"
    }
    assert set(tensors) == expected
    for gguf_name, out_features, in_features in MODULES.values():
        name = f"blk.1.{gguf_name}.weight"
        # ggml order (ne0 first): lora_a [in, r], lora_b [r, out], as llama.cpp checks them.
        assert [int(n) for n in tensors[f"{name}.lora_a"].shape] == [in_features, 4]
        assert [int(n) for n in tensors[f"{name}.lora_b"].shape] == [4, out_features]
        assert tensors[f"{name}.lora_a"].tensor_type.name == "F32"
    assert result == {
        "path": str(gguf_path),
        "modelfile": str(tmp_path / "out" / "Modelfile"),
        "sha256": hashlib.sha256(gguf_path.read_bytes()).hexdigest(),
        "sizeBytes": gguf_path.stat().st_size,
        "tensors": 28,
        "arch": "llama",
    }
    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    assert modelfile == "FROM smollm2:135m\nADAPTER ./adapter.gguf\n"


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_llama_q_k_lora_b_rows_are_permuted_and_the_rest_kept(tmp_path: Path, dtype: str) -> None:
    values = write_adapter(tmp_path / "adapter", dtype=dtype)
    base = write_base_config(tmp_path / "base")
    export_adapter_gguf(tmp_path / "adapter", base, tmp_path / "out", ollama_base="x:1b")
    _, tensors = read_back(tmp_path / "out" / "adapter.gguf")
    heads = {"attn_q": 4, "attn_k": 2}
    for name, (a, b) in values.items():
        got_a = matrix(tensors[f"{name}.weight.lora_a"])
        got_b = matrix(tensors[f"{name}.weight.lora_b"])
        np.testing.assert_array_equal(got_a, a)
        kind = name.split(".")[-1]
        want_b = permute_rows(b, heads[kind]) if kind in heads else b
        np.testing.assert_array_equal(got_b, want_b)
        if kind in heads:
            assert not np.array_equal(got_b, b)


def test_permutation_matches_llama_cpp_convention() -> None:
    """Within each head, llama.cpp interleaves the two rotary halves: rows 0,h,1,h+1,..."""
    rows = np.arange(16, dtype=np.float32).reshape(16, 1)
    permuted = permute_rows(rows, 2).ravel().tolist()
    assert permuted == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


@pytest.mark.parametrize(
    ("model_type", "arch", "prefix"),
    [
        ("qwen2", "qwen2", "model."),
        ("qwen3", "qwen3", "model."),
        ("mistral", "llama", "model."),
        ("gemma2", "gemma2", "model."),
        ("gemma3_text", "gemma3", "model."),
        ("gemma3", "gemma3", "model.language_model."),  # multimodal: the text model is nested
    ],
)
def test_supported_architectures_in_f16(
    tmp_path: Path, model_type: str, arch: str, prefix: str
) -> None:
    values = write_adapter(tmp_path / "adapter", prefix=prefix)
    base = write_base_config(tmp_path / "base", model_type)
    result = export_adapter_gguf(
        tmp_path / "adapter", base, tmp_path / "out", ollama_base="m", dtype="f16"
    )
    fields, tensors = read_back(tmp_path / "out" / "adapter.gguf")
    assert result["arch"] == fields["general.architecture"] == arch
    assert len(tensors) == result["tensors"] == 28
    a, b = values["blk.1.attn_q"]
    assert tensors["blk.1.attn_q.weight.lora_b"].tensor_type.name == "F16"
    want_b = permute_rows(b, 4) if arch == "llama" else b  # only llama-family is permuted
    np.testing.assert_allclose(matrix(tensors["blk.1.attn_q.weight.lora_b"]), want_b, rtol=1e-3)
    np.testing.assert_allclose(matrix(tensors["blk.1.attn_q.weight.lora_a"]), a, rtol=1e-3)


def test_rslora_scale_becomes_the_gguf_alpha(tmp_path: Path) -> None:
    """llama.cpp scales by alpha/r; rsLoRA's alpha/sqrt(r) is alpha*sqrt(r)/r."""
    write_adapter(tmp_path / "adapter", rank=4, alpha=8, use_rslora=True)
    base = write_base_config(tmp_path / "base")
    export_adapter_gguf(tmp_path / "adapter", base, tmp_path / "out", ollama_base="m")
    fields, _ = read_back(tmp_path / "out" / "adapter.gguf")
    assert fields["adapter.lora.alpha"] == pytest.approx(8 * math.sqrt(4))


def test_uneven_rslora_scales_are_folded_into_lora_b(tmp_path: Path) -> None:
    values = write_adapter(
        tmp_path / "adapter", rank=4, alpha=8, use_rslora=True, ranks={"mlp.down_proj": 16}
    )
    base = write_base_config(tmp_path / "base")
    export_adapter_gguf(tmp_path / "adapter", base, tmp_path / "out", ollama_base="m")
    fields, tensors = read_back(tmp_path / "out" / "adapter.gguf")
    assert fields["adapter.lora.alpha"] == 0.0  # llama.cpp: alpha 0 means scale 1
    _, b_down = values["blk.0.ffn_down"]
    _, b_v = values["blk.0.attn_v"]
    got_down = matrix(tensors["blk.0.ffn_down.weight.lora_b"])
    np.testing.assert_allclose(got_down, b_down * 8 / math.sqrt(16), rtol=1e-6)
    got_v = matrix(tensors["blk.0.attn_v.weight.lora_b"])
    np.testing.assert_allclose(got_v, b_v * 8 / math.sqrt(4), rtol=1e-6)


def test_missing_files_say_which(tmp_path: Path) -> None:
    base = write_base_config(tmp_path / "base")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        export_adapter_gguf(tmp_path / "nothing", base, tmp_path / "out", ollama_base="m")
    write_adapter(tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        export_adapter_gguf(tmp_path / "adapter", base, tmp_path / "out", ollama_base="m")
    with pytest.raises(FileNotFoundError, match="config.json"):
        export_adapter_gguf(
            tmp_path / "adapter", tmp_path / "nobase", tmp_path / "out", ollama_base="m"
        )
    assert not (tmp_path / "out").exists()


def test_unknown_architecture_and_bad_ollama_tag_are_named(tmp_path: Path) -> None:
    write_adapter(tmp_path / "adapter")
    base = write_base_config(tmp_path / "base", "gpt_neox")
    with pytest.raises(GGUFExportError, match="'gpt_neox'.*supported: gemma"):
        export_adapter_gguf(tmp_path / "adapter", base, tmp_path / "out", ollama_base="m")
    base = write_base_config(tmp_path / "base")
    with pytest.raises(GGUFExportError, match="Ollama model tag"):
        export_adapter_gguf(tmp_path / "adapter", base, tmp_path / "out", ollama_base="a\nRUN x")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"alpha_pattern": {"q_proj": 32}}, "alpha_pattern"),
        ({"bias": "all"}, "bias='none'"),
        ({"peft_type": "IA3"}, "not a LoRA"),
        ({"lora_alpha": 0}, "lora_alpha"),
    ],
)
def test_unsupported_adapter_settings_are_refused(
    tmp_path: Path, config: dict[str, object], message: str
) -> None:
    write_adapter(tmp_path / "adapter", **config)
    base = write_base_config(tmp_path / "base")
    with pytest.raises(GGUFExportError, match=message):
        export_adapter_gguf(tmp_path / "adapter", base, tmp_path / "out", ollama_base="m")
    assert not (tmp_path / "out").exists()


def test_embedding_lora_and_tied_lm_head_are_refused(tmp_path: Path) -> None:
    import torch

    base = write_base_config(tmp_path / "base")
    embedding = {"base_model.model.model.embed_tokens.lora_embedding_A": torch.zeros(4, 10)}
    write_adapter(tmp_path / "emb", extra_tensors=embedding)
    with pytest.raises(GGUFExportError, match="embedding LoRA"):
        export_adapter_gguf(tmp_path / "emb", base, tmp_path / "out", ollama_base="m")
    head = {
        "base_model.model.lm_head.lora_A.weight": torch.zeros(4, 64),
        "base_model.model.lm_head.lora_B.weight": torch.zeros(10, 4),
    }
    write_adapter(tmp_path / "head", extra_tensors=head)
    with pytest.raises(GGUFExportError, match="lm_head"):
        export_adapter_gguf(tmp_path / "head", base, tmp_path / "out", ollama_base="m")


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".out."))


def test_failed_export_leaves_nothing_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_adapter(tmp_path / "adapter")
    base = write_base_config(tmp_path / "base")
    out = tmp_path / "exports" / "out"
    first = export_adapter_gguf(tmp_path / "adapter", base, out, ollama_base="m")

    def half_written(path: Path, *args: object, **kwargs: object) -> None:
        path.write_bytes(b"GGUF partial")
        raise OSError("disk full")

    monkeypatch.setattr(gguf_export, "write_gguf", half_written)
    with pytest.raises(OSError, match="disk full"):
        export_adapter_gguf(tmp_path / "adapter", base, out, ollama_base="other")
    assert _leftovers(out.parent) == []
    assert hashlib.sha256((out / "adapter.gguf").read_bytes()).hexdigest() == first["sha256"]
    assert (out / "Modelfile").read_text().startswith("FROM m\n")

    with pytest.raises(OSError, match="disk full"):
        export_adapter_gguf(tmp_path / "adapter", base, tmp_path / "fresh", ollama_base="m")
    assert not (tmp_path / "fresh").exists()


def test_reexport_replaces_the_old_folder(tmp_path: Path) -> None:
    write_adapter(tmp_path / "adapter", alpha=8)
    base = write_base_config(tmp_path / "base")
    out = tmp_path / "exports" / "out"
    export_adapter_gguf(tmp_path / "adapter", base, out, ollama_base="m")
    (out / "stale.txt").write_text("from the old export")
    write_adapter(tmp_path / "adapter", alpha=32)
    export_adapter_gguf(tmp_path / "adapter", base, out, ollama_base="n")
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "adapter.gguf"]
    assert read_back(out / "adapter.gguf")[0]["adapter.lora.alpha"] == pytest.approx(32)
    assert _leftovers(out.parent) == []


def test_cli_prints_the_result_and_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_adapter(tmp_path / "adapter")
    base = write_base_config(tmp_path / "base")
    argv = [str(tmp_path / "adapter"), str(base), str(tmp_path / "out"), "--ollama-base", "m:1"]
    assert gguf_export.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["tensors"] == 28 and Path(printed["path"]).is_file()
    argv[1] = str(tmp_path / "missing")
    assert gguf_export.main(argv) == 2
    assert "config.json" in capsys.readouterr().err
