"""One measurement in a process of its own, for the benchmarks that train (objectives.py,
retraining.py): the parent writes a JSON spec and runs `script --child SPEC`; the child does
the work with fresh memory and threads and prints one `RESULT {...}` line on stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

PREFIX = "RESULT "


def read_spec(spec_path: Path) -> dict[str, Any]:
    """The child's spec, with torch's threads set as the parent asked."""
    import torch

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    return spec


def report(result: dict[str, Any]) -> None:
    print(PREFIX + json.dumps(result), flush=True)


def run(script: str, spec: dict[str, Any], work: Path, what: str) -> dict[str, Any]:
    """Run `script`'s child on `spec` (written into `work`); its result, or RuntimeError
    naming `what` failed with the end of its stderr."""
    work.mkdir(parents=True, exist_ok=True)
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, script, "--child", str(spec_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith(PREFIX):
            return json.loads(line.removeprefix(PREFIX))
    raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
