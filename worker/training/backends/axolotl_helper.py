"""Runs inside Axolotl's environment (PYTHON_PATH), never in the worker's own process.

    python -m worker.training.backends.axolotl_helper validate cfg.yaml
        Axolotl's own validator (offline) plus an unknown-key check; prints one JSON line
        {"ok": bool, "errors": [...]} and exits 0 (valid) or 2 (invalid).
    python -m worker.training.backends.axolotl_helper train cfg.yaml
        the same, then, when valid, Axolotl's train command (axolotl.cli.train) on it.

This module imports nothing heavy at the top: `datasets` saves Axolotl's prepared data through
a spawned process pool, and each spawned process imports the `__main__` module again (with
Axolotl's CLI as `__main__`, that is Axolotl, torch and bitsandbytes: ~10 s a pool on 2 cores).
The trainer-side plugin lives in axolotl_plugin.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from worker.training.lifeline import exit_with_parent

EVENTS_ENV = "TMDE_AXOLOTL_EVENTS"
INVALID_EXIT = 2


def known_keys() -> set[str]:
    """Every top-level key Axolotl's config schema knows (field names and aliases)."""
    from axolotl.utils.schemas.config import AxolotlInputConfig

    keys = set()
    for name, info in AxolotlInputConfig.model_fields.items():
        keys.add(name)
        if info.alias:
            keys.add(info.alias)
    return keys


def validate(path: Path) -> list[str]:
    import yaml
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    errors = [f"unknown key {key!r}" for key in sorted(set(cfg) - known_keys())]
    try:
        validate_config(DictDefault(cfg))
    except Exception as exc:  # noqa: BLE001 - pydantic and Axolotl's own ValueErrors alike
        errors.append(" ".join(str(exc).split()))
    return errors


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("validate", "train"):
        print("usage: python -m worker.training.backends.axolotl_helper validate|train CFG.yaml")
        return 1
    errors = validate(Path(argv[1]))
    print(json.dumps({"ok": not errors, "errors": errors}), flush=True)
    if errors:
        return INVALID_EXIT
    if argv[0] == "train":
        exit_with_parent(signal.SIGKILL)  # it trains in this process: no one else to stop
        # `python -m axolotl.cli.train CFG` in this process: one interpreter start and one
        # import of Axolotl (~15 s on a small CPU) serve both validation and training.
        from axolotl.cli.train import do_cli

        sys.argv = [sys.argv[0]]  # its argument parser reads sys.argv for trainer CLI flags
        do_cli(config=argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
