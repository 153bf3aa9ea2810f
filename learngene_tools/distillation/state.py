"""A run's resumable state (`distill-state.pt`) and its metrics log (`metrics.jsonl`), in the work folder.

The state is a weights-only torch pickle with a sha256 over its content, so a truncated,
bit-flipped or foreign file is refused with one line saying what to do instead of resuming
from wrong weights. On resume the metrics log is cut back to the checkpoint's step, so the
lines of the steps a killed run did after its last checkpoint are not repeated.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from learngene_tools import __version__
from learngene_tools.distillation.config import DistillSettings, RunOptions
from learngene_tools.errors import InvalidFileError, NotFoundError, OutputError, SettingsError
from learngene_tools.io.files import atomic_path
from learngene_tools.io.writing import torch_save

STATE_FILE = "distill-state.pt"
METRICS_FILE = "metrics.jsonl"
STATE_FORMAT = 2
_STATE_KEYS = {"format", "settings", "student", "optimizer", "step", "images_seen", "skipped_images",
               "tool_version", "sha256"}


@dataclass(frozen=True)
class SavedState:
    """What a checkpoint holds: the weights, the optimiser state and how far the run got."""

    settings_json: str
    student: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    step: int
    images_seen: int
    skipped_images: int


def save_state(path: Path, state: SavedState) -> None:
    """Write the state atomically, with a digest of its content."""
    obj: dict[str, Any] = {
        "format": STATE_FORMAT, "settings": state.settings_json, "student": state.student,
        "optimizer": state.optimizer, "step": state.step, "images_seen": state.images_seen,
        "skipped_images": state.skipped_images, "tool_version": __version__,
    }
    obj["sha256"] = _digest(obj)
    with atomic_path(path) as tmp:
        torch_save(obj, tmp)


def load_state(path: Path) -> SavedState:
    """Read and verify a state file; InvalidFileError (one line, with what to do) when it is damaged."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before failing on foreign files
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the file is ours: any failure to read it means it is damaged
        raise _damaged(path, _first_line(e)) from None
    if not isinstance(obj, dict) or set(obj) != _STATE_KEYS or obj.get("format") != STATE_FORMAT:
        raise _damaged(path, "not a distillation state of this lgt version")
    if obj["sha256"] != _digest({k: v for k, v in obj.items() if k != "sha256"}):
        raise _damaged(path, "its content does not match its checksum")
    return SavedState(obj["settings"], obj["student"], obj["optimizer"], int(obj["step"]), int(obj["images_seen"]),
                      int(obj["skipped_images"]))


def _damaged(path: Path, why: str) -> InvalidFileError:
    return InvalidFileError(f"{path}: damaged distillation checkpoint ({why}); restore it from a copy, "
                            "or start the run over with --force instead of --resume")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:160] if text else "") or type(e).__name__


def _digest(obj: Any) -> str:
    """sha256 over a nested structure of dicts, lists, tensors and scalars (keys in sorted order)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"S{obj!r}".encode())


def resume_point(opts: RunOptions, settings: DistillSettings) -> SavedState | None:
    """The saved state to resume from, or None for a fresh run; refuses to mix runs."""
    state_path = opts.work_dir / STATE_FILE
    if not state_path.exists():
        if opts.resume:
            raise NotFoundError(f"{state_path}: nothing to resume (no checkpoint in {opts.work_dir}); "
                                "run without --resume")
        return None
    if not opts.resume:
        if opts.force:
            return None
        raise OutputError(f"{opts.work_dir} holds an earlier run (step checkpoint {STATE_FILE}); "
                          "pass --resume to continue it or --force to start over")
    state = load_state(state_path)
    try:
        saved = json.loads(state.settings_json)
    except ValueError:
        raise _damaged(state_path, "unreadable settings") from None
    now = json.loads(json.dumps(settings.to_json()))
    diff = sorted(k for k in set(saved) | set(now) if k != "steps" and saved.get(k) != now.get(k))
    if diff:
        raise SettingsError(f"--resume: settings differ from the saved run in {', '.join(diff)}; "
                            "use the same settings (only --steps may change) or another --work-dir")
    return state


def restart_metrics(path: Path, resumed_from: int | None) -> None:
    """Start the metrics log of a run: empty for a fresh run; on resume, cut back to the checkpoint's step.

    Lines after the first one past `resumed_from` (or the first unreadable one: a killed writer's
    last line) are dropped, then a `{"event": "resumed", ...}` line records the resumption.
    """
    if resumed_from is None:
        path.unlink(missing_ok=True)
        return
    kept = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            break
        step = record.get("step", 0) if isinstance(record, dict) else None
        if not isinstance(step, int) or step > resumed_from:
            break
        kept.append(line)
    kept.append(json.dumps({"event": "resumed", "from_step": resumed_from, "tool_version": __version__}))
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in kept))


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Add one record to the metrics log."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
