"""The seed's training script as `tmde-finetune train`: JSON lines and exit codes (§5.1, §5.3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shared.fields import base_type, constraints
from shared.run_config import FIELDS, ConfigError
from shared.settings import Settings
from worker.training import cli

REPO = Path(__file__).resolve().parents[2]


def _args(model: Path, export_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--base-model",
        str(model),
        "--train-data",
        str(export_dir / "train.jsonl"),
        "--val-data",
        str(export_dir / "val.jsonl"),
        "--output-dir",
        str(out),
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
        "--max-seq-len",
        "256",
        "--eval-steps",
        "2",
        "--save-steps",
        "2",
        "--run-id",
        "abc123",
        *extra,
    ]


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_success_prints_events_and_writes_the_adapter(
    tiny_model: Path, export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "adapters" / "run_abc123"
    assert (
        cli.main(_args(tiny_model, export_dir, out, "--max-steps", "2", "--objective", "sft")) == 0
    )
    stdout = capsys.readouterr().out
    assert all(line.startswith("{") for line in stdout.splitlines()), "stdout is JSON lines only"
    events = _events(stdout)
    assert events[0]["type"] == "training_start" and events[-1]["type"] == "complete"
    assert events[-1]["adapter_path"] == str(out)
    assert events[-1]["metrics"]["total_steps"] == 2
    assert (out / "adapter_model.safetensors").is_file() and (out / "metrics.json").is_file()
    assert not list(out.parent.glob(".*partial*"))


def test_sft_then_dpo_reads_the_pairs_beside_the_data(
    tiny_model: Path, export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "adapters" / "run_dpo"
    flags = ("--max-steps", "2", "--objective", "sft+dpo", "--dpo-max-steps", "1")
    assert cli.main(_args(tiny_model, export_dir, out, *flags)) == 0
    events = _events(capsys.readouterr().out)
    starts = [(e["stage"], e["total_steps"]) for e in events if e["type"] == "training_start"]
    assert starts == [("sft", 3), ("dpo", 3)]
    metrics = events[-1]["metrics"]
    assert (metrics["sft_total_steps"], metrics["dpo_total_steps"]) == (2, 1)
    assert json.loads((out / "training_args.json").read_text())["objective"] == "sft+dpo"


def test_dpo_without_pairs_exits_2(
    tiny_model: Path, export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "none.jsonl"
    empty.write_text("")
    flags = ("--objective", "dpo", "--train-pairs", str(empty))
    assert cli.main(_args(tiny_model, export_dir, tmp_path / "out", *flags)) == 2
    event = _events(capsys.readouterr().out)[-1]
    assert event["code"] == "INSUFFICIENT_DATA" and "needs preference pairs" in event["message"]


def test_missing_data_exits_2(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "train.jsonl").write_text("")
    (tmp_path / "val.jsonl").write_text("")
    assert cli.main(_args(tiny_model, tmp_path, tmp_path / "out")) == 2
    assert _events(capsys.readouterr().out)[-1]["code"] == "INSUFFICIENT_DATA"


def test_unknown_model_exits_4(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(_args(Path("nosuch:7b"), export_dir, tmp_path / "out")) == 4
    captured = capsys.readouterr()
    assert _events(captured.out)[-1]["code"] == "MODEL_NOT_FOUND"
    assert captured.err.startswith("ERROR: Unknown model tag")


def test_bad_arguments_exit_1(
    tiny_model: Path, export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(_args(tiny_model, export_dir, tmp_path / "o", "--lora-rank", "0")) == 1
    assert "--lora-rank: must be an integer between 1 and 1024" in capsys.readouterr().err


def test_every_training_field_of_the_run_config_has_a_flag() -> None:
    flags = cli.config_flags()
    assert set(flags) == set(FIELDS) - set(cli.EXPORT_ONLY)
    assert flags["learning_rate"] == "--lr" and flags["lora_rank"] == "--lora-rank"


def test_flags_map_onto_the_config_with_setting_defaults_elsewhere() -> None:
    argv = ["--train-data", "t", "--val-data", "v", "--output-dir", "o"]
    argv += ["--max-steps", "5", "--lr", "1e-3", "--no-packing", "--target-modules", "q_proj"]
    config = cli.config_from_args(cli.parse_args(argv), Settings(epochs=7))
    assert (config.max_steps, config.learning_rate, config.packing) == (5, 1e-3, False)
    assert config.target_modules == ["q_proj"] and config.epochs == 7


BOUNDED = sorted(name for name in cli.config_flags() if "le" in constraints(FIELDS[name]))


@pytest.mark.parametrize("name", BOUNDED)
def test_each_flag_refuses_one_past_its_documented_bound(name: str) -> None:
    bounds = constraints(FIELDS[name])
    too_big = bounds["le"] + (1 if base_type(FIELDS[name]) is int else 0.01)
    argv = ["--train-data", "t", "--val-data", "v", "--output-dir", "o"]
    args = cli.parse_args([*argv, cli.config_flags()[name], str(too_big)])
    with pytest.raises(ConfigError) as info:
        cli.config_from_args(args, Settings())
    assert list(info.value.errors) == [FIELDS[name].alias]


def test_sigint_cancels_cleanly_with_exit_130(
    tiny_model: Path, export_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "train",
            *_args(tiny_model, export_dir, out, "--max-steps", "2000"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "MODEL_CACHE_DIR": str(tmp_path / "models")},
    )
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(json.loads(line))
        if seen[-1]["type"] == "progress":
            process.send_signal(signal.SIGINT)
            break
    rest = _events(process.stdout.read())
    assert process.wait(timeout=120) == 130
    assert rest[-1]["type"] == "error" and rest[-1]["code"] == "CANCELLED"
    assert not out.exists()
