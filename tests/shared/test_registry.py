"""The adapter registry on real folders: listing, activation, rollback, tags, deletion,
retention, integrity checks and concurrent activation."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from shared.registry import (
    AdapterConflictError,
    AdapterError,
    AdapterIntegrityError,
    AdapterNotFoundError,
    AdapterRegistry,
)
from tests.adapters import make_adapter


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "lora-adapters"


@pytest.fixture
def registry(root: Path) -> AdapterRegistry:
    for day, adapter_id in enumerate(["run_aaaaaa", "run_bbbbbb", "run_cccccc"], start=1):
        make_adapter(root, adapter_id, created=f"2026-11-0{day}T00:00:00Z")
    return AdapterRegistry(root)


def manifest_flags(root: Path) -> dict[str, bool]:
    return {
        p.parent.name: json.loads(p.read_text())["isActive"] for p in root.glob("*/manifest.json")
    }


def test_empty_registry(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path / "none")
    assert registry.list() == [] and registry.active() is None
    assert registry.state() == {"adapterId": None, "activatedAt": None, "history": []}


def test_list_is_newest_first_with_manifest_fields(registry: AdapterRegistry) -> None:
    rows = registry.list()
    assert [r["id"] for r in rows] == ["run_cccccc", "run_bbbbbb", "run_aaaaaa"]
    assert all(r["isActive"] is False and r["metrics"]["adapterValLoss"] == 1.0 for r in rows)
    assert registry.get("run_bbbbbb")["sha256"] == rows[1]["sha256"]


@pytest.mark.parametrize("bad", ["../etc", "run_x/..", ".work", "a" * 101, "", "run x"])
def test_ids_that_could_escape_the_folder_are_refused(registry: AdapterRegistry, bad: str) -> None:
    with pytest.raises(AdapterNotFoundError):
        registry.get(bad)
    with pytest.raises(AdapterNotFoundError):
        registry.activate(bad)


def test_unknown_adapter(registry: AdapterRegistry) -> None:
    with pytest.raises(AdapterNotFoundError, match="run_dddddd"):
        registry.activate("run_dddddd")


def test_activate_writes_active_json_and_manifests_agree(
    registry: AdapterRegistry, root: Path
) -> None:
    state = registry.activate("run_aaaaaa", reason="first")
    on_disk = json.loads((root / "active.json").read_text())
    assert on_disk == state and on_disk["adapterId"] == "run_aaaaaa"
    assert on_disk["path"] == str((root / "run_aaaaaa").resolve())
    assert on_disk["sha256"] == registry.get("run_aaaaaa")["sha256"]
    assert (
        on_disk["history"][-1]["previous"] is None and on_disk["history"][-1]["reason"] == "first"
    )
    registry.activate("run_bbbbbb")
    assert manifest_flags(root) == {"run_aaaaaa": False, "run_bbbbbb": True, "run_cccccc": False}
    assert registry.active()["id"] == "run_bbbbbb"
    assert [r["id"] for r in registry.list() if r["isActive"]] == ["run_bbbbbb"]


def test_activating_the_active_adapter_changes_nothing(registry: AdapterRegistry) -> None:
    first = registry.activate("run_aaaaaa")
    assert registry.activate("run_aaaaaa") == first


def test_rollback_undoes_activations_down_to_the_base_model(registry: AdapterRegistry) -> None:
    for adapter_id in ("run_aaaaaa", "run_bbbbbb", "run_cccccc"):
        registry.activate(adapter_id)
    assert registry.rollback()["adapterId"] == "run_bbbbbb"
    assert registry.rollback()["adapterId"] == "run_aaaaaa"
    state = registry.rollback(reason="bad week")
    assert state["adapterId"] is None and state["path"] is None
    assert state["history"][-1] == {
        **state["history"][-1],
        "action": "rollback",
        "reason": "bad week",
    }
    with pytest.raises(AdapterConflictError, match="base model is active"):
        registry.rollback()
    assert not any(manifest_flags(registry.root).values())


def test_rollback_with_no_history_is_a_conflict(registry: AdapterRegistry) -> None:
    with pytest.raises(AdapterConflictError, match="Nothing to roll back"):
        registry.rollback()


def test_rollback_skips_deleted_adapters(registry: AdapterRegistry) -> None:
    for adapter_id in ("run_aaaaaa", "run_bbbbbb", "run_cccccc"):
        registry.activate(adapter_id)
    registry.delete("run_bbbbbb")
    assert registry.rollback()["adapterId"] == "run_aaaaaa"


def test_tampered_weights_are_refused_and_nothing_changes(
    registry: AdapterRegistry, root: Path
) -> None:
    registry.activate("run_aaaaaa")
    before = (root / "active.json").read_text()
    weights = root / "run_bbbbbb" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(AdapterIntegrityError, match="sha256"):
        registry.activate("run_bbbbbb")
    assert (root / "active.json").read_text() == before
    assert manifest_flags(root)["run_bbbbbb"] is False


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda m: {**m, "sha256": "0" * 64}, "sha256"),
        (lambda m: {**m, "id": "run_other"}, "does not match the folder"),
        (lambda m: {k: v for k, v in m.items() if k != "baseModel"}, "baseModel must be"),
        (lambda m: {**m, "sizeBytes": "big"}, "sizeBytes must be"),
    ],
)
def test_tampered_manifest_is_refused(
    registry: AdapterRegistry, root: Path, tamper, message
) -> None:  # noqa: ANN001
    path = root / "run_bbbbbb" / "manifest.json"
    path.write_text(json.dumps(tamper(json.loads(path.read_text()))))
    with pytest.raises(AdapterIntegrityError, match=message):
        registry.activate("run_bbbbbb")
    assert registry.active_id() is None


def test_unreadable_manifest_and_missing_weights_are_refused(
    registry: AdapterRegistry, root: Path
) -> None:
    (root / "run_aaaaaa" / "manifest.json").write_text("{not json")
    with pytest.raises(AdapterIntegrityError, match="unreadable"):
        registry.activate("run_aaaaaa")
    (root / "run_bbbbbb" / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterIntegrityError, match="weights"):
        registry.activate("run_bbbbbb")
    assert "error" in next(r for r in registry.list() if r["id"] == "run_aaaaaa")


def test_exports_folder_is_outside_the_seal(registry: AdapterRegistry, root: Path) -> None:
    exports = root / "run_aaaaaa" / "exports" / "gguf"
    exports.mkdir(parents=True)
    (exports / "adapter.gguf").write_bytes(b"GGUF")
    registry.activate("run_aaaaaa")  # still verifies


def test_tags_replace_and_validate(registry: AdapterRegistry) -> None:
    assert registry.set_tags("run_aaaaaa", ["stable", "math-focused", "stable"])["tags"] == [
        "math-focused",
        "stable",
    ]
    registry.verify("run_aaaaaa")  # tags live in the manifest, outside the seal
    for bad in ["stable", [1], ["has space"], ["../x"], ["-dash"]]:
        with pytest.raises(AdapterError):
            registry.set_tags("run_aaaaaa", bad)
    assert registry.get("run_aaaaaa")["tags"] == ["math-focused", "stable"]


def test_delete_refuses_the_active_adapter(registry: AdapterRegistry, root: Path) -> None:
    registry.activate("run_aaaaaa")
    with pytest.raises(AdapterConflictError, match="active adapter"):
        registry.delete("run_aaaaaa")
    registry.delete("run_bbbbbb")
    assert not (root / "run_bbbbbb").exists()
    assert [p.name for p in root.iterdir() if p.name.startswith(".deleted")] == []
    with pytest.raises(AdapterNotFoundError):
        registry.delete("run_bbbbbb")


def test_retention_keeps_newest_tagged_active_and_rollback_target(root: Path) -> None:
    ids = [f"run_00000{i}" for i in range(8)]
    for i, adapter_id in enumerate(ids):
        make_adapter(root, adapter_id, created=f"2026-11-0{i + 1}T00:00:00Z")
    registry = AdapterRegistry(root)
    registry.set_tags("run_000001", ["stable"])
    registry.activate("run_000002")
    registry.activate("run_000003")  # run_000002 is now the rollback target
    deleted = registry.prune(keep=2)
    assert sorted(deleted) == ["run_000000", "run_000004", "run_000005"]
    assert registry.ids() == ["run_000007", "run_000006", "run_000003", "run_000002", "run_000001"]
    assert registry.prune(keep=2) == []


def _activate_many(root: str, adapter_ids: list[str], rounds: int, go: object = None) -> None:
    registry = AdapterRegistry(Path(root))
    if go is not None:
        go.wait(30)  # type: ignore[attr-defined]
    for i in range(rounds):
        registry.activate(adapter_ids[i % len(adapter_ids)])


def test_concurrent_activation_leaves_a_consistent_state(registry: AdapterRegistry) -> None:
    """Two processes and two threads activate at once; every change lands in the history and
    exactly the adapter named by active.json is marked active."""
    ids = ["run_aaaaaa", "run_bbbbbb", "run_cccccc"]
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    root = str(registry.root)
    procs = [ctx.Process(target=_activate_many, args=(root, ids, 60, go)) for _ in "ab"]
    threads = [
        threading.Thread(target=_activate_many, args=(root, ids[::-1], 60, go)) for _ in "ab"
    ]
    for worker in [*procs, *threads]:
        worker.start()
    time.sleep(1.5)  # let the spawned interpreters reach the start line
    go.set()
    for worker in [*procs, *threads]:
        worker.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    state = json.loads((registry.root / "active.json").read_text())
    flags = manifest_flags(registry.root)
    assert [k for k, v in flags.items() if v] == [state["adapterId"]]
    history = state["history"]
    assert history[-1]["adapterId"] == state["adapterId"]
    # each entry's `previous` is the entry before it: no change was lost or interleaved
    assert all(b["previous"] == a["adapterId"] for a, b in zip(history, history[1:], strict=False))
    assert not list(registry.root.glob(".active.json.*"))  # no temp files left behind
