"""The child side of bench/train_throughput.py: one training run in its own process.

Each child trains (the service's path or a bare SFTTrainer script), counts the non-pad tokens of
every step and, after each step, hands the CPU back to the parent, which lets the runs take
turns one optimizer step at a time (see train_throughput.py's docstring).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.run_config import FineTuneConfig
    from worker.training.job import TrainJob

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class _Stop(Exception):
    """Raised inside a child's training loop when the parent has all the steps it needs."""


class _Turns:
    """Counts the tokens of each training step and hands the CPU back after every step."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.started: float | None = None
        self.cpu_started = 0.0
        self.counts = {"tokens": 0, "loss_tokens": 0, "padded_tokens": 0, "rows": 0}

    def count(self, inputs: dict[str, Any]) -> None:
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        labels = inputs.get("labels")
        self.counts["tokens"] += int(mask.sum()) if mask is not None else ids.numel()
        self.counts["padded_tokens"] += ids.numel()
        self.counts["rows"] += ids.shape[0]
        if labels is not None:
            self.counts["loss_tokens"] += int((labels[:, 1:] != -100).sum())

    def step_begin(self, args: Any, state: Any, model: Any) -> None:
        now = time.perf_counter()
        if self.started is None:
            self.conn.send(("ready", describe(args, model)))
        else:
            self.conn.send(
                (
                    "segment",
                    {
                        "seconds": now - self.started,
                        "step": state.global_step,
                        "cpu_seconds": time.process_time() - self.cpu_started,
                        **self.counts,
                    },
                )
            )
        if self.conn.recv() == "stop":
            raise _Stop
        self.counts = dict.fromkeys(self.counts, 0)
        self.cpu_started = time.process_time()
        self.started = time.perf_counter()


def describe(args: Any, model: Any) -> dict[str, Any]:
    import torch

    padding_free = bool(
        args.padding_free or (args.packing and args.packing_strategy in {"bfd", "bfd_split"})
    )
    dtype = next(p.dtype for p in model.parameters())
    return {
        "packing": f"{args.packing_strategy}" if args.packing else "off",
        "padding_free": padding_free,
        "grad_ckpt": bool(getattr(model, "is_gradient_checkpointing", False)),
        "precision": str(dtype).removeprefix("torch.") + (" +bf16 autocast" if args.bf16 else ""),
        "logging_steps": args.logging_steps,
        "eval": str(getattr(args.eval_strategy, "value", args.eval_strategy)),
        "threads": torch.get_num_threads(),
    }


def _install_hooks(turns: _Turns) -> None:
    from transformers import Trainer
    from transformers.trainer_callback import CallbackHandler

    training_step = Trainer.training_step
    on_step_begin = CallbackHandler.on_step_begin

    def counting_training_step(self: Any, model: Any, inputs: Any, *args: Any, **kw: Any) -> Any:
        turns.count(inputs)
        return training_step(self, model, inputs, *args, **kw)

    def taking_turns(self: Any, args: Any, state: Any, control: Any) -> Any:
        turns.step_begin(args, state, self.model)
        return on_step_begin(self, args, state, control)

    Trainer.training_step = counting_training_step
    CallbackHandler.on_step_begin = taking_turns


def _service_config(spec: dict[str, Any], overrides: dict[str, Any]) -> FineTuneConfig:
    from shared.run_config import build_config
    from shared.settings import Settings

    return build_config(
        Settings.from_env(),
        {
            "baseModel": spec["model_path"],
            "batchSize": spec["batch_size"],
            "maxSeqLen": spec["max_len"],
            "maxSteps": spec["max_steps"],
            "gradAccum": 1,
            **overrides,
        },
    )


def _job(spec: dict[str, Any], config: FineTuneConfig, workdir: Path, emitter: Any) -> TrainJob:
    from shared.settings import Settings
    from worker.training.job import TrainJob

    return TrainJob(
        run_id="bench",
        config=config,
        model_path=Path(spec["model_path"]),
        train_path=Path(spec["train_path"]),
        val_path=Path(spec["val_path"]),
        adapter_dir=workdir / "adapter",
        checkpoint_dir=workdir / "checkpoints",
        emitter=emitter,
        torch_threads=Settings.from_env().torch_threads,
    )


def run_service(spec: dict[str, Any], variant: dict[str, Any], workdir: Path) -> None:
    from shared.events import Emitter
    from worker.training.backends import run_backend, trl_backend

    if variant.get("sft"):
        original = trl_backend.sft_arguments

        def patched(*args: Any, **kwargs: Any) -> dict[str, Any]:
            return {**original(*args, **kwargs), **variant["sft"]}

        trl_backend.sft_arguments = patched
    log = (workdir / "events.jsonl").open("a", encoding="utf-8")
    emitter = Emitter("bench", [lambda event: log.write(event.to_json() + "\n")])
    config = _service_config(spec, variant.get("config", {}))
    run_backend(_job(spec, config, workdir, emitter))


def bare_records(path: Path, tokenizer: Any) -> list[dict[str, Any]]:
    """What a plain script does: Alpaca rows -> TRL prompt/completion records."""
    records = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            question = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
            if tokenizer.chat_template:
                records.append(
                    {
                        "prompt": [{"role": "user", "content": question}],
                        "completion": [{"role": "assistant", "content": row["output"]}],
                    }
                )
            else:
                records.append(
                    {"prompt": question + "\n", "completion": row["output"] + tokenizer.eos_token}
                )
    return records


def run_bare(spec: dict[str, Any], same_args: bool, workdir: Path) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    config = _service_config(spec, {})
    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(spec["model_path"])
    train_set = Dataset.from_list(bare_records(Path(spec["train_path"]), tokenizer))
    eval_set = None
    if same_args:
        from worker.training.sft_loop import sft_arguments

        bf16 = cuda and torch.cuda.is_bf16_supported()
        arguments = sft_arguments(_job(spec, config, workdir, None), cuda=cuda, bf16=bf16)
        arguments["output_dir"] = str(workdir / "checkpoints")
        model = AutoModelForCausalLM.from_pretrained(
            spec["model_path"], dtype=torch.bfloat16 if bf16 else torch.float32
        )
        eval_set = Dataset.from_list(bare_records(Path(spec["val_path"]), tokenizer))
    else:
        arguments = {
            "output_dir": str(workdir / "checkpoints"),
            "per_device_train_batch_size": spec["batch_size"],
            "max_length": spec["max_len"],
            "max_steps": spec["max_steps"],
        }
        if not cuda:
            arguments["bf16"] = False
        model = AutoModelForCausalLM.from_pretrained(spec["model_path"])
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**arguments),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=lora,
    )
    trainer.train()


def child_main(run_kind: str, variant: dict[str, Any], spec: dict[str, Any], conn: Any) -> None:
    workdir = Path(tempfile.mkdtemp(prefix=f"{run_kind}-", dir=spec["workdir"]))
    log = os.open(workdir / "output.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    try:
        turns = _Turns(conn)
        _install_hooks(turns)
        if run_kind == "service":
            run_service(spec, variant, workdir)
        else:
            run_bare(spec, run_kind == "bare-same", workdir)
        conn.send(("error", f"training ended before the parent stopped it ({workdir})"))
    except _Stop:
        pass
    except BaseException:  # noqa: BLE001 - report anything to the parent
        traceback.print_exc()
        conn.send(("error", f"{traceback.format_exc(limit=-4)}\nlog: {workdir}/output.log"))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
