"""The Axolotl plugin named in every generated YAML (`plugins:`); loaded by Axolotl only.

Its trainer callback appends one JSON line per trainer event (begin, step, log, save, end) to
the file named by TMDE_AXOLOTL_EVENTS; the worker tails that file while Axolotl runs and replays
the lines through the same PipelineCallback the in-process backends use.

In the DPO stage (`rl: dpo`) it also makes Axolotl 0.19 train what the in-process DPO stage
trains (worker/training/dpo_loop.py):
- Axolotl ignores `lora_model_dir` under `rl: dpo`: its model loader asks for the LoRA config
  only (loaders/model.py, ModelLoader._load_adapters: `config_only=True` for DPO, IPO and KTO)
  and `load_lora` returns before the `lora_model_dir` branch (loaders/adapter.py), so TRL wraps
  the model in a fresh adapter. The plugin loads the SFT adapter into it and keeps a frozen
  copy named "ref" as the reference, as TRL's DPOTrainer does when given a trained PeftModel.
- after an RL run with an adapter Axolotl saves the adapter and then the whole base model with
  the LoRA layers in it (train.py, save_trained_model): a second copy of the model on disk.
  The plugin keeps the adapter only.
- on a resume in the DPO stage it loads the checkpoint's trained adapter itself (see
  post_trainer_create: transformers 5.16 resumes only the "ref/" subfolder of such a checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
import resource
from pathlib import Path
from typing import Any

from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback

from worker.training.backends.axolotl_helper import EVENTS_ENV
from worker.training.dpo_loop import load_trained_adapter
from worker.training.hooks import inject_faults, oom_hook

# Under Axolotl's "axolotl" logger: its handler prints these lines into the stage's output log.
log = logging.getLogger("axolotl.tmde")
REF_ADAPTER = "ref"  # the name TRL's DPOTrainer gives the frozen reference adapter


class EventFileCallback(TrainerCallback):
    """Appends the trainer's progress to a JSON-lines file, flushed at every line."""

    def __init__(self, path: str) -> None:
        self.handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the trainer
        self.oom = oom_hook()

    def _write(self, kind: str, state: Any, **fields: Any) -> None:
        record = {
            "event": kind,
            "step": state.global_step,
            "max_steps": state.max_steps,
            "num_input_tokens_seen": int(getattr(state, "num_input_tokens_seen", 0) or 0),
            **fields,
        }
        self.handle.write(json.dumps(record, default=float) + "\n")
        self.handle.flush()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Count trained tokens as the trl backend does (the loop reads this flag every step).
        args.include_num_input_tokens_seen = "non_padding"
        self._write("begin", state, batch_size=args.per_device_train_batch_size)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # the same test hooks as the in-process backends' callback (a hang, a real OOM)
        inject_faults(state.global_step, args.per_device_train_batch_size, self.oom)
        self._write("step", state)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
    ) -> None:
        self._write("log", state, logs=logs or {})

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._write("save", state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch

        from worker.provenance import library_versions

        cuda = torch.cuda.is_available()
        self._write(
            "end",
            state,
            peak_vram_gb=round(torch.cuda.max_memory_allocated() / 1024**3, 3) if cuda else None,
            peak_ram_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
            device="cuda" if cuda else "cpu",
            libraries=library_versions(),  # Axolotl's environment's, not the worker's
        )


def continue_adapter(model: Any, adapter_dir: Path, *, disable_dropout: bool) -> None:
    """Load `adapter_dir` into the PEFT model's trained adapter ("default") and add a frozen
    copy "ref": TRL 1.9's DPOTrainer computes the reference with "ref" when the model has one
    (use_adapter), so DPO moves away from the SFT model, as DPO's derivation assumes."""
    load_trained_adapter(model, adapter_dir)
    if REF_ADAPTER not in model.peft_config:
        model.add_adapter(REF_ADAPTER, model.peft_config["default"])
    for name, param in model.named_parameters():
        if f".{REF_ADAPTER}." in name:
            param.requires_grad_(False)
            param.data.copy_(model.get_parameter(name.replace(f".{REF_ADAPTER}.", ".default.")))
    if disable_dropout:  # DPOTrainer disabled dropout before "ref" existed: its layers too
        from trl.trainer.utils import disable_dropout_in_model

        disable_dropout_in_model(model)
    log.info("DPO continues the adapter in %s (reference: its frozen copy)", adapter_dir)


def keep_adapter_only(model: Any) -> None:
    """Axolotl's final save of an RL run writes the adapter (the PEFT model's save) and then
    `model.save_pretrained` of the base model: the full weights again. Skip the latter."""
    base = getattr(model, "get_base_model", lambda: None)()
    if base is None:  # not a PEFT model: nothing of Axolotl's to skip
        return

    def skip(folder: str, *args: Any, **kwargs: Any) -> None:
        log.info("not saving the full model into %s: the adapter is what this run keeps", folder)

    base.save_pretrained = skip  # this instance only; the PEFT model's own save is untouched


class ProgressPlugin(BasePlugin):
    """Axolotl plugin: adds EventFileCallback to the trainer Axolotl builds; in the DPO stage
    continues the SFT adapter and keeps the adapter only (see the module's docstring)."""

    def post_trainer_create(self, cfg: Any, trainer: Any) -> None:
        # Axolotl always evaluates before the first step when eval_steps is set; the other
        # backends evaluate every eval_steps only, and their event sequences must match.
        trainer.args.eval_on_start = False
        if not (cfg.rl and cfg.adapter):
            return
        if cfg.lora_model_dir:
            continue_adapter(
                trainer.model,
                Path(cfg.lora_model_dir),
                disable_dropout=bool(getattr(trainer.args, "disable_dropout", False)),
            )
            if cfg.resume_from_checkpoint:
                # A checkpoint of this stage holds "ref/" beside the trained adapter, and
                # transformers 5.16's Trainer (Axolotl 0.19's pin) then resumes the subfolder
                # adapters only (trainer.py, _load_from_checkpoint: `if adapter_subdirs:`),
                # leaving "default" at SFT's weights: load the trained one here (5.24 does too).
                load_trained_adapter(trainer.model, Path(cfg.resume_from_checkpoint))
        keep_adapter_only(trainer.model)

    def add_callbacks_post_trainer(self, cfg: Any, trainer: Any) -> list:
        path = os.environ.get(EVENTS_ENV)
        return [EventFileCallback(path)] if path else []
