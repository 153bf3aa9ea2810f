"""What a loaded checkpoint is: its tensors by unprefixed key, every copy of its weights, and what writing it back
needs (`io.reading` opens one, `io.writing` writes it, `io.folders` knows save_pretrained layouts).

A checkpoint may hold several copies of the weights (the model and its EMA, a folder's safetensors and .bin
files, ultralytics' pickled `model` and `ema`): all are read, checked to agree, and written with the same updates.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from learngene_tools.errors import InvalidFileError
from learngene_tools.io.files import check_input
from learngene_tools.io.folders import FOLDER_OPTIMIZER_FILES
from learngene_tools.io.header import SafetensorsHeader

WRAPPER_KEYS = ("state_dict", "model", "model_ema", "state_dict_ema", "ema", "module", "net", "network")
EMA_KEYS = frozenset({"model_ema", "state_dict_ema", "ema"})
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optimizer_states")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)


@dataclass
class WeightCopy:
    """One copy of the weights inside a pickled checkpoint (the model, an EMA), found under `path`."""

    path: tuple[str, ...]  # keys from the top of the container, () for a bare state_dict
    prefix: str
    state: dict[str, Any]  # prefixed key -> tensor (a pickled module's: its live parameters and buffers)
    module: torch.nn.Module | None = None  # a whole pickled model (ultralytics), written back as one

    @property
    def label(self) -> str:
        """E.g. "['state_dict_ema']", "['ema'] (DetectionModel)" or "bare state_dict"."""
        text = "".join(f"[{k!r}]" for k in self.path) or "bare state_dict"
        return text + (f" ({type(self.module).__name__})" if self.module is not None else "")

    @property
    def is_ema(self) -> bool:
        """True for an exponential-moving-average copy."""
        return bool(set(self.path) & EMA_KEYS)

    def get(self, key: str) -> torch.Tensor:
        """The tensor of an unprefixed key."""
        t = self.state[self.prefix + key]
        return t.detach() if self.module is not None else t

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Unprefixed key -> shape of every tensor."""
        n = len(self.prefix)
        return {k[n:]: tuple(v.shape) for k, v in self.state.items() if isinstance(v, torch.Tensor)}

    @contextlib.contextmanager
    def updated(self, updates: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """The copy holds `updates` (cast to its own dtypes) inside the block, its original tensors after it."""
        originals = {k: self.get(k) for k in updates}
        try:
            for k, t in updates.items():
                self._set(k, t.to(originals[k].dtype))
            yield
        finally:
            for k, t in originals.items():
                self._set(k, t)

    def _set(self, key: str, t: torch.Tensor) -> None:
        if self.module is not None:
            self.state[self.prefix + key].data = t
        else:
            self.state[self.prefix + key] = t


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors by unprefixed key, plus what is needed to write it back as it was."""

    source: str
    fmt: str  # "safetensors" | "pickle" | "model" | "folder"
    shapes: dict[str, tuple[int, ...]]  # unprefixed key -> shape, in checkpoint order
    dtypes: dict[str, torch.dtype]
    prefix: str = ""
    wrapper: tuple[str, ...] = ()
    path: Path | None = None
    arch: str | None = None  # set when the checkpoint was built from a model spec
    metadata: dict[str, str] = field(default_factory=dict)
    copies: list[WeightCopy] = field(default_factory=list)  # pickle/model: every copy, the first is the one read
    weight_sets: list[list[Checkpoint]] = field(default_factory=list)  # folder: each copy's files (shards)
    _header: SafetensorsHeader | None = None
    _container: Any = None  # pickle: the whole loaded object
    _state: dict[str, Any] | None = None  # pickle/model: the state dict inside it

    def tensor(self, key: str) -> torch.Tensor:
        """Load one tensor by its unprefixed key."""
        if self.copies:
            return self.copies[0].get(key)
        if self._state is not None:
            return self._state[self.prefix + key]
        if self.weight_sets:
            return next(c for c in self.weight_sets[0] if key in c.shapes).tensor(key)
        from safetensors import safe_open

        with _safetensors_errors(self.path):
            with safe_open(str(self.path), framework="pt") as f:
                return f.get_tensor(self.prefix + key)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All tensors by unprefixed key (loads a safetensors file whole: use `tensor` for big ones)."""
        if self.copies or self._state is not None:
            return {k: self.tensor(k) for k in self.shapes}
        if self.weight_sets:
            return {k: v for c in self.weight_sets[0] for k, v in c.state_dict().items()}
        from safetensors.torch import load_file

        with _safetensors_errors(self.path):
            sd = load_file(str(self.path))
        return {k: sd[self.prefix + k] for k in self.shapes}

    @property
    def container(self) -> Any:
        """The whole loaded object of a pickle (the dict around the state_dict), None for other formats."""
        return self._container

    @property
    def wrapper_desc(self) -> str:
        """Human description of the wrapper and prefix, e.g. "['model'], prefix 'module.'"."""
        if self.fmt == "folder":
            return "folder with " + " and ".join(self.copy_labels)
        parts = []
        if self.wrapper:
            parts.append("under " + "".join(f"[{k!r}]" for k in self.wrapper))
        if self.prefix:
            parts.append(f"prefix {self.prefix!r}")
        if len(self.copies) > 1:
            parts.append("copies " + ", ".join(c.label for c in self.copies))
        elif self.copies and self.copies[0].module is not None:
            parts.append(f"a pickled {type(self.copies[0].module).__name__}")
        return ", ".join(parts) or "bare state_dict"

    @property
    def copy_labels(self) -> list[str]:
        """Every copy of the weights a transplant writes, in words."""
        if self.weight_sets:
            return [_set_label(s) for s in self.weight_sets]
        if self.copies:
            return [c.label for c in self.copies]
        return [Path(self.source).name if self.path is not None else "state_dict"]

    def check_copies_agree(self) -> None:
        """Raise InvalidFileError unless every copy of the weights has the same keys and shapes (each gets the
        same plan)."""
        if self.weight_sets:
            shapes = [{k: v for m in members for k, v in m.shapes.items()} for members in self.weight_sets]
        else:
            shapes = [c.shapes() for c in self.copies]
        labels = self.copy_labels
        for label, other in zip(labels[1:], shapes[1:]):
            if other != shapes[0]:
                diff = sorted(set(other) ^ set(shapes[0])) or [k for k in other if other[k] != shapes[0][k]]
                raise InvalidFileError(
                    f"{self.source}: its weight copies differ ({labels[0]}: {len(shapes[0])} tensors, {label}: "
                    f"{len(other)}; e.g. {diff[0]}); lgt writes every copy with the same plan and cannot do so here"
                )

    @property
    def optimizer_state(self) -> list[str]:
        """Entries holding optimizer state (top-level keys of a pickle, files of a folder)."""
        if self.fmt == "folder" and self.path is not None:
            return [n for n in FOLDER_OPTIMIZER_FILES if (self.path / n).is_file()]
        if isinstance(self._container, Mapping):
            return [k for k in OPTIMIZER_KEYS if self._container.get(k) is not None]
        return []


def _set_label(files: list[Checkpoint]) -> str:
    names = [Path(c.source).name for c in files]
    return names[0] if len(names) == 1 else f"{len(names)} shards ({names[0]} …)"


@contextlib.contextmanager
def _safetensors_errors(path: Path | None) -> Any:
    """safetensors reads a file our reader already accepted; if it changed since, that is one line, not a crash."""
    from safetensors import SafetensorError

    check_input(path)  # type: ignore[arg-type]  (never hand a FIFO swapped in meanwhile to safetensors)
    try:
        yield
    except (SafetensorError, OSError) as e:
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise InvalidFileError(f"{path}: cannot read the safetensors file ({msg}); did it change while lgt ran?") from None


def checkpoint_from_state_dict(state: dict[str, torch.Tensor], source: str, arch: str | None = None) -> Checkpoint:
    """Wrap an in-memory state_dict (e.g. of a freshly built model) as a Checkpoint."""
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return Checkpoint(
        source=source, fmt="model", arch=arch, _state=state,
        shapes={k: tuple(v.shape) for k, v in state.items()},
        dtypes={k: v.dtype for k, v in state.items()},
    )


def copy_readers(ckpt: Checkpoint) -> list[Callable[[str], torch.Tensor]]:
    """For each copy of the weights (`copy_labels`' order), a function reading one of its tensors."""
    if ckpt.copies:
        return [c.get for c in ckpt.copies]
    if ckpt.weight_sets:
        def reader(members: list[Checkpoint]) -> Callable[[str], torch.Tensor]:
            return lambda key: next(m for m in members if key in m.shapes).tensor(key)
        return [reader(members) for members in ckpt.weight_sets]
    return [ckpt.tensor]
