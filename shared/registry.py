"""The adapter registry (seed §6): published adapters, the active one, and its history.

    <LORA_OUTPUT_DIR>/<adapter_id>/manifest.json   one folder per published adapter
    <LORA_OUTPUT_DIR>/active.json                  which adapter the Proposer uses, + history
    <LORA_OUTPUT_DIR>/.registry.lock               serialises every change (flock)

`active.json` is the source of truth: it is replaced atomically, and every change rewrites the
`isActive` flag of the manifests it touches and then reconciles all of them, so a reader never
sees `isActive` disagree with it (the registry reports `isActive` from active.json itself).

Rollback is an undo: each history entry remembers the adapter that was active before it
(`previous`), so rolling back twice goes back two activations, skipping adapters deleted in
between, down to the base model (no adapter) at the bottom of the stack.

Only the registry's own callers (the API, the CLI, the evaluation step) change these files.
Locking is `fcntl.flock` on a file beside them: it serialises threads and processes on one
machine and on a shared filesystem that supports flock (NFSv4, CephFS).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.events import utc_timestamp
from shared.fsutil import folder_digest, write_json_atomic
from shared.names import ErrorCode

MANIFEST = "manifest.json"
SAMPLES_FILE = "samples.json"  # held-out answers side by side (worker/pipeline.py writes it)
ACTIVE_FILE = "active.json"
LOCK_FILE = ".registry.lock"
EXPORTS_DIR = "exports"  # derived files (GGUF); not covered by the adapter's sha256
SEALED_EXCLUDES = (MANIFEST, EXPORTS_DIR)
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
HISTORY_LIMIT = 200
ADAPTER_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,99}$")  # no dots: never a traversal
TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
MAX_TAGS = 32
REQUIRED_FIELDS = {"id": str, "baseModel": str, "sha256": str, "sizeBytes": int}


class AdapterError(Exception):
    """A registry request that cannot be honoured (app/errors.py gives each its HTTP status)."""

    code: ErrorCode = ErrorCode.ADAPTER_INVALID

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AdapterNotFoundError(AdapterError):
    code = ErrorCode.ADAPTER_NOT_FOUND


class AdapterConflictError(AdapterError):
    code = ErrorCode.ADAPTER_CONFLICT


class AdapterIntegrityError(AdapterError):
    code = ErrorCode.ADAPTER_INTEGRITY


def check_adapter_id(adapter_id: str) -> str:
    if not ADAPTER_ID.match(adapter_id or ""):
        raise AdapterNotFoundError(
            f"Adapter not found: {adapter_id!r} is not an adapter id (letters, digits, _ and -)"
        )
    return adapter_id


def check_tags(tags: Any) -> list[str]:
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise AdapterError('"tags" must be a list of strings, e.g. ["stable", "math-focused"]')
    bad = [t for t in tags if not TAG.match(t)]
    if bad:
        raise AdapterError(
            f"Invalid tag(s) {bad}: 1-64 characters, letters, digits and _ . : - "
            "(starting with a letter or digit)"
        )
    if len(set(tags)) > MAX_TAGS:
        raise AdapterError(f"At most {MAX_TAGS} tags per adapter")
    return sorted(set(tags))


class AdapterRegistry:
    """Every read and change of the published adapters goes through here."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # --- reading ------------------------------------------------------------------------------
    def path(self, adapter_id: str) -> Path:
        return self.root / check_adapter_id(adapter_id)

    def state(self) -> dict[str, Any]:
        """active.json, or the empty state (base model, no history) when there is none."""
        try:
            data = json.loads((self.root / ACTIVE_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"adapterId": None, "activatedAt": None, "history": []}
        except (OSError, ValueError) as exc:
            raise AdapterIntegrityError(
                f"{self.root / ACTIVE_FILE} is unreadable ({exc}); restore it from a backup or "
                "delete it to fall back to the base model"
            ) from exc
        data.setdefault("history", [])
        return data

    def active_id(self) -> str | None:
        return self.state().get("adapterId")

    def _manifests(self) -> list[tuple[str, dict[str, Any]]]:
        """(id, manifest) of every published adapter, newest first (createdAt, then id)."""
        if not self.root.is_dir():
            return []
        found = [
            (folder.name, self._read_manifest(folder))
            for folder in self.root.iterdir()
            if folder.is_dir() and ADAPTER_ID.match(folder.name) and (folder / MANIFEST).is_file()
        ]
        return sorted(found, key=lambda f: (f[1].get("createdAt") or "", f[0]), reverse=True)

    def ids(self) -> list[str]:
        """Published adapters, newest first."""
        return [adapter_id for adapter_id, _ in self._manifests()]

    def get(self, adapter_id: str) -> dict[str, Any]:
        folder = self.path(adapter_id)
        if not (folder / MANIFEST).is_file():
            raise AdapterNotFoundError(f"Adapter not found: {adapter_id}")
        manifest = self._read_manifest(folder)
        return {
            **manifest,
            "id": adapter_id,
            "isActive": self.active_id() == adapter_id,
            "path": str(folder),
        }

    def list(self) -> list[dict[str, Any]]:
        active = self.active_id()
        return [
            {**manifest, "id": i, "isActive": i == active, "path": str(self.root / i)}
            for i, manifest in self._manifests()
        ]

    def samples(self, adapter_id: str) -> list[dict[str, Any]]:
        """The held-out answers side by side (samples.json); empty when unreadable."""
        try:
            rows = json.loads((self.path(adapter_id) / SAMPLES_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []

    def lineage(self, adapter_id: str) -> list[dict[str, Any]]:
        """The adapters a warm-started one continued, parent first: manifest "parentAdapter"
        followed until none; a deleted one is `missing` and ends the chain, as a cycle does."""
        chain: list[dict[str, Any]] = []
        seen = {adapter_id}
        parent = self.get(adapter_id).get("parentAdapter")
        while isinstance(parent, str) and parent and parent not in seen:
            seen.add(parent)
            try:
                manifest = self.get(parent)
            except AdapterError:  # deleted, or not an adapter id
                chain.append({"id": parent, "createdAt": None, "missing": True})
                break
            chain.append({"id": parent, "createdAt": manifest.get("createdAt"), "missing": False})
            parent = manifest.get("parentAdapter")
        return chain

    def active(self) -> dict[str, Any] | None:
        adapter_id = self.active_id()
        return self.get(adapter_id) if adapter_id else None

    def verify(self, adapter_id: str) -> dict[str, Any]:
        """The manifest of a complete, untampered adapter; AdapterIntegrityError otherwise."""
        folder = self.path(adapter_id)
        if not folder.is_dir():
            raise AdapterNotFoundError(f"Adapter not found: {adapter_id}")
        manifest = self._read_manifest(folder, strict=True)
        problems = [
            f"{name} must be a {kind.__name__}"
            for name, kind in REQUIRED_FIELDS.items()
            if not isinstance(manifest.get(name), kind)
        ]
        if manifest.get("id") != adapter_id:
            problems.append(f"id {manifest.get('id')!r} does not match the folder name")
        if not (folder / "adapter_config.json").is_file():
            problems.append("adapter_config.json is missing")
        if not any((folder / name).is_file() for name in WEIGHT_FILES):
            problems.append("the adapter weights (adapter_model.safetensors) are missing")
        if not problems:
            sha256, size = folder_digest(folder, exclude=SEALED_EXCLUDES)
            if sha256 != manifest["sha256"] or size != manifest["sizeBytes"]:
                problems.append(
                    "its files do not match the manifest's sha256/sizeBytes "
                    "(a file was changed, added or removed after publishing)"
                )
        if problems:
            raise AdapterIntegrityError(
                f"Adapter {adapter_id} failed verification: {'; '.join(problems)}. "
                "Refusing to use it; retrain it or restore the folder from a backup."
            )
        return manifest

    # --- changing ------------------------------------------------------------------------------
    def activate(
        self,
        adapter_id: str,
        *,
        action: str = "activate",
        reason: str = "",
        expect_active: str | None | bool = False,
    ) -> dict[str, Any]:
        """Make `adapter_id` the active adapter (after verifying it). `expect_active`, when not
        False, makes this a compare-and-set: refused if another adapter became active since."""
        with self._locked():
            manifest = self.verify(adapter_id)
            state = self.state()
            current = state.get("adapterId")
            if expect_active is not False and current != expect_active:
                raise AdapterConflictError(
                    f"The active adapter changed to {current!r} (expected {expect_active!r})"
                )
            if current == adapter_id:
                return state
            entry = {"adapterId": adapter_id, "previous": current, "action": action}
            return self._write_state(state, entry, manifest, reason)

    def rollback(self, *, reason: str = "") -> dict[str, Any]:
        """Back to the adapter active before the current one (the base model at the bottom)."""
        with self._locked():
            state = self.state()
            history = state["history"]
            if not history or history[-1].get("adapterId") != state.get("adapterId"):
                raise AdapterConflictError("Nothing to roll back to: no activation history")
            if state.get("adapterId") is None:
                raise AdapterConflictError("Nothing to roll back to: the base model is active")
            target = history[-1].get("previous")
            while target is not None and not (self.root / target / MANIFEST).is_file():
                target = self._previous_of(history, target)  # deleted since: skip over it
            manifest = self.verify(target) if target else None
            entry = {
                "adapterId": target,
                "previous": self._previous_of(history, target) if target else None,
                "action": "rollback",
            }
            return self._write_state(state, entry, manifest, reason)

    def set_tags(self, adapter_id: str, tags: Any) -> dict[str, Any]:
        clean = check_tags(tags)
        with self._locked():
            self.get(adapter_id)
            self._update_manifest(adapter_id, tags=clean)
        return self.get(adapter_id)

    def update_manifest(self, adapter_id: str, **fields: Any) -> dict[str, Any]:
        """Record mutable facts (promotion decision, exports) in the manifest."""
        with self._locked():
            self._update_manifest(adapter_id, **fields)
        return self.get(adapter_id)

    def delete(self, adapter_id: str) -> None:
        with self._locked():
            self.get(adapter_id)
            if self.active_id() == adapter_id:
                raise AdapterConflictError(
                    f"{adapter_id} is the active adapter; activate another one or roll back "
                    "before deleting it"
                )
            self._remove(adapter_id)

    def prune(self, keep: int) -> list[str]:
        """Retention: keep the newest `keep` adapters, every tagged one, the active one and the
        rollback target; delete the rest. Returns the ids deleted."""
        with self._locked():
            state = self.state()
            protected = {state.get("adapterId")}
            if state["history"]:
                protected.add(state["history"][-1].get("previous"))
            removed = []
            for index, (adapter_id, manifest) in enumerate(self._manifests()):
                if index < keep or manifest.get("tags") or adapter_id in protected:
                    continue
                self._remove(adapter_id)
                removed.append(adapter_id)
            return removed

    # --- internals -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_manifest(self, folder: Path, *, strict: bool = False) -> dict[str, Any]:
        try:
            data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return data
        except (OSError, ValueError) as exc:
            if strict:
                raise AdapterIntegrityError(
                    f"Adapter {folder.name} failed verification: manifest.json is unreadable "
                    f"({exc}). Refusing to use it; retrain it or restore it from a backup."
                ) from exc
            return {"id": folder.name, "error": f"manifest.json is unreadable: {exc}"}

    def _update_manifest(self, adapter_id: str, **fields: Any) -> None:
        folder = self.path(adapter_id)
        manifest = self._read_manifest(folder, strict=True)
        write_json_atomic(folder / MANIFEST, {**manifest, **fields})

    @staticmethod
    def _previous_of(history: list[dict[str, Any]], adapter_id: str | None) -> str | None:
        for entry in reversed(history):
            if entry.get("adapterId") == adapter_id:
                return entry.get("previous")
        return None

    def _write_state(
        self,
        state: dict[str, Any],
        entry: dict[str, Any],
        manifest: dict[str, Any] | None,
        reason: str,
    ) -> dict[str, Any]:
        now = utc_timestamp()
        adapter_id = entry["adapterId"]
        history = [*state["history"], {**entry, "at": now, "reason": reason}][-HISTORY_LIMIT:]
        new_state = {
            "adapterId": adapter_id,
            "path": str((self.root / adapter_id).resolve()) if adapter_id else None,
            "baseModel": manifest.get("baseModel") if manifest else None,
            "sha256": manifest.get("sha256") if manifest else None,
            "activatedAt": now,
            "history": history,
        }
        write_json_atomic(self.root / ACTIVE_FILE, new_state)
        self._reconcile(adapter_id)
        return new_state

    def _reconcile(self, active: str | None) -> None:
        """Make every manifest's isActive agree with active.json (it is written first)."""
        for adapter_id, manifest in self._manifests():
            if "error" not in manifest and manifest.get("isActive") != (adapter_id == active):
                write_json_atomic(
                    self.root / adapter_id / MANIFEST,
                    {**manifest, "isActive": adapter_id == active},
                )

    def _remove(self, adapter_id: str) -> None:
        """Rename away first, so the adapter disappears at once even if deletion is slow."""
        trash = self.root / f".deleted-{adapter_id}-{uuid.uuid4().hex[:8]}"
        os.rename(self.root / adapter_id, trash)
        shutil.rmtree(trash, ignore_errors=True)
