"""GPU check (issue 5): unsloth (4-bit QLoRA) against trl (bf16 LoRA) on a CUDA machine, then a
20-step run through the whole task path. No network; a few minutes on one H100/H200.

    python bench/gpu_check.py                 # on a CUDA machine
    python bench/gpu_check.py --smoke         # on a CPU, tiny sizes: checks the script itself

What it does:
1. builds a Qwen3-shaped model with random weights (Qwen3-0.6B's widths, `--layers` layers) and a
   BPE tokenizer trained on the synthetic demo traces, and exports those traces to Alpaca JSONL;
2. trains `--steps` optimizer steps with each backend through the project's own backends
   (worker.training.backends.run_backend), each in a fresh process (Unsloth patches transformers
   for the whole process), and prints tokens/s, peak VRAM and the unsloth/trl ratios;
3. runs export -> train -> evaluate (worker.pipeline, SQLite + fakeredis) for 20 steps with
   FINETUNE_BACKEND=auto and prints each step's time and the backend the manifest records.

What the GPU machine needs beyond its torch, transformers, peft and accelerate (it has no
network): wheels for the project and these, carried in a folder and installed with
`pip install --no-index --find-links WHEELS ...` (`python bench/gpu_check.py --wheels DIR`
downloads them here into DIR, for Python 3.11 / manylinux x86_64):
    trl datasets pyarrow dill multiprocess xxhash fsspec        (the trl backend)
    unsloth unsloth_zoo bitsandbytes                            (the unsloth backend, 4-bit)
    sqlalchemy alembic redis fakeredis celery kombu croniter    (the task path)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WHEELS = [
    "trl>=1.15,<1.17", "datasets>=3.4.1,<5", "unsloth==2026.10.9", "unsloth_zoo==2026.10.9",
    "bitsandbytes", "sqlalchemy", "alembic", "redis", "fakeredis[lua]", "celery[redis]",
    "croniter", "flask", "flask-sock",
]  # fmt: skip


def build_model(folder: Path, *, layers: int, smoke: bool) -> Path:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from shared.demo_traces import generate
    from tests.tiny_model import build_tiny_model

    texts = [t.query + " " + t.final_answer for t in generate(300)]
    build_tiny_model(folder, texts, vocab_size=400 if smoke else 4000)  # tokenizer (+ a Llama)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    widths = (
        {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "head_dim": 16}
        if smoke
        else {
            "hidden_size": 1024,
            "intermediate_size": 3072,
            "num_attention_heads": 16,
            "head_dim": 128,
        }
    )
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        num_hidden_layers=layers,
        num_key_value_heads=2 if smoke else 8,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **widths,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(torch.bfloat16 if not smoke else torch.float32)
    for stale in folder.glob("model*.safetensors"):
        stale.unlink()
    model.save_pretrained(folder)
    return folder


def export_data(root: Path, count: int) -> Path:
    from shared.demo_traces import generate
    from shared.traces import TraceStore
    from worker.export import export_traces

    store = TraceStore(root / "traces.db")
    store.add_many(generate(count))
    out = root / "export"
    export_traces(store, min_quality=0.0, output_dir=out, val_split=0.1, seed=1)
    return out


def one_backend(backend: str, model: Path, data: Path, work: Path, args: argparse.Namespace):
    """Train in this process with `backend`; return its metrics (run by a fresh subprocess)."""
    from shared.events import Emitter
    from shared.run_config import build_config
    from shared.settings import Settings
    from worker.training.backends import run_backend
    from worker.training.job import TrainJob

    config = build_config(
        Settings(),
        {
            "baseModel": str(model),
            "backend": backend,
            "maxSteps": args.steps,
            "evalSteps": 10_000,
            "saveSteps": 10_000,
            "batchSize": args.batch,
            "gradAccum": 1,
            "maxSeqLen": args.seq,
        },
    )
    job = TrainJob(
        run_id=f"gpu_check_{backend}",
        config=config,
        model_path=model,
        train_path=data / "train.jsonl",
        val_path=data / "val.jsonl",
        adapter_dir=work / backend / "adapter",
        checkpoint_dir=work / backend / "checkpoints",
        emitter=Emitter(f"gpu_check_{backend}"),
        python_path=sys.executable,
    )
    return run_backend(job).metrics


def compare(model: Path, data: Path, work: Path, args: argparse.Namespace) -> dict:
    results = {}
    for backend in args.backends:
        out = work / f"{backend}.json"
        command = [sys.executable, __file__, "--one", backend, "--model", str(model)]
        command += ["--data", str(data), "--work", str(work), "--json", str(out)]
        command += ["--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq)]
        started = time.monotonic()
        done = subprocess.run(command, cwd=ROOT, check=False)
        if done.returncode != 0:
            print(f"{backend}: FAILED (exit {done.returncode})")
            continue
        results[backend] = json.loads(out.read_text())
        m = results[backend]
        print(
            f"{backend:8s} {m['tokens_per_second']:>10} tok/s  peak VRAM {m['peak_vram_gb']} GB  "
            f"loss {m['final_train_loss']:.3f}  ({time.monotonic() - started:.0f} s with loading)"
        )
    if {"trl", "unsloth"} <= set(results):
        u, t = results["unsloth"], results["trl"]
        print(f"unsloth/trl tokens/s: {u['tokens_per_second'] / t['tokens_per_second']:.2f}x")
        if u["peak_vram_gb"] and t["peak_vram_gb"]:
            print(f"unsloth/trl peak VRAM: {u['peak_vram_gb'] / t['peak_vram_gb']:.2f}x")
    return results


def whole_path(model: Path, root: Path, args: argparse.Namespace) -> None:
    """export -> train -> evaluate through worker.pipeline, as the Celery tasks call them."""
    import fakeredis

    from shared import migrate
    from shared.db import Database
    from shared.demo_traces import generate
    from shared.models import FineTuneRun
    from shared.run_config import build_config
    from shared.runs import RunStore
    from shared.settings import Settings
    from shared.traces import TraceStore
    from worker import pipeline
    from worker.runtime import Runtime

    url = f"sqlite:///{root / 'runs.db'}"
    settings = Settings(
        database_url=url,
        traces_db_path=root / "traces.db",
        lora_output_dir=root / "lora-adapters",
        temp_dir=root / "tmp",
        log_dir=root / "logs",
        model_cache_dir=root / "models",
        python_path=sys.executable,
    )
    TraceStore(settings.traces_db_path).add_many(generate(400))
    migrate.upgrade(url)
    db = Database(url)
    rt = Runtime(settings, db, fakeredis.FakeRedis(), RunStore(db))
    pipeline.runtime = lambda: rt  # the steps look their runtime up through this function
    overrides = {
        "baseModel": str(model),
        "backend": "auto",
        "maxSteps": args.path_steps,
        "evalSteps": 10,
        "batchSize": args.batch,
        "maxSeqLen": args.seq,
    }
    config = build_config(settings, {**overrides, "saveSteps": 10, "evalSamples": 2}).to_dict()
    with db.session() as session:
        session.add(
            FineTuneRun(
                id="gpu_path", base_model=str(model), config=json.dumps(config), active_slot=1
            )
        )
    for name, step in (
        ("export", pipeline.export_step),
        ("train", pipeline.train_step),
        ("evaluate", pipeline.evaluate_step),
    ):
        started = time.monotonic()
        result = step("gpu_path")
        print(f"task path {name:8s} {time.monotonic() - started:6.1f} s  {result}")
    run = rt.runs.get("gpu_path")
    manifest = json.loads(Path(run.lora_path or "", "manifest.json").read_text())
    print(f"task path: status {run.status}, backend {run.backend}, manifest {manifest['backend']}")


def download_wheels(folder: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "-d", str(folder), "--python-version"]
    command += ["3.11", "--platform", "manylinux_2_28_x86_64", "--only-binary=:all:", *WHEELS]
    subprocess.run(command, check=True)
    size = sum(p.stat().st_size for p in folder.iterdir()) / 1024**2
    print(f"{folder}: {size:.0f} MiB (torch/CUDA wheels excluded by the machine's constraints?)")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on a CPU (checks the script)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--path-steps", type=int, default=20)
    p.add_argument("--backends", nargs="+", default=["trl", "unsloth"])
    p.add_argument("--wheels", type=Path, help="download the wheels the GPU machine needs")
    p.add_argument("--one", help=argparse.SUPPRESS)
    for hidden in ("--model", "--data", "--work", "--json"):
        p.add_argument(hidden, type=Path, help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.wheels:
        download_wheels(args.wheels)
        return 0
    if args.one:
        metrics = one_backend(args.one, args.model, args.data, args.work, args)
        args.json.write_text(json.dumps(metrics))
        return 0
    import torch

    if not torch.cuda.is_available() and not args.smoke:
        print("No CUDA device: this check needs a GPU (or --smoke for a CPU run of the script).")
        return 2
    if args.smoke:
        args.steps, args.layers, args.batch, args.seq = 3, 2, 2, 128
        args.path_steps = 2
        args.backends = [b for b in args.backends if b == "trl"]
    root = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    started = time.monotonic()
    model = build_model(root / "qwen3-random", layers=args.layers, smoke=args.smoke)
    data = export_data(root, 400)
    print(f"model and data ready in {time.monotonic() - started:.0f} s ({root})")
    compare(model, data, root / "runs", args)
    whole_path(model, root / "path", args)
    print(f"gpu_check done in {time.monotonic() - started:.0f} s")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
