"""Which architecture a checkpoint holds, so that it can be traced instead of guessed.

In this order, each answer verified by aligning the built model's keys and shapes with the checkpoint's:
1. the checkpoint's own model object (ultralytics pickles the whole model; loading it needs --trust-pickle);
2. its hints: a timm training checkpoint's `arch`; a `config.json` in the folder or beside the file
   (timm's `architecture`, segmentation-models-pytorch's `_model_class`, transformers' `architectures`);
3. RepLKNet variants from their keys;
4. an exact match of the key/shape set (a classifier head with another class count, or none, allowed)
   against every model timm, torchvision and the installed descendant packages build (`arch_index`).
Only installed packages' own model classes are ever built: a hint names a model, it never runs code of its own.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import nn

from learngene_tools.architectures.keysets import SAVE_RENAMES, KeyMap, align_model
from learngene_tools.architectures.tracing import on_meta
from learngene_tools.errors import LgtError

Shapes = Mapping[str, tuple[int, ...]]
MAX_CANDIDATES = 12  # identical key sets beyond this are reported as ambiguous
_UNSAFE_ARG = ("pretrained", "checkpoint", "file", "path", "url", "cache", "hub", "token", "remote", "download")


@dataclass
class Architecture:
    """The model a checkpoint holds: how it was found, how to build it, and its keys mapped onto the checkpoint's."""

    spec: str  # e.g. "timm:resnet50"
    how: str  # e.g. "exact key and shape match", "given with --arch"
    build: Callable[[bool], nn.Module]  # meta -> a model with the checkpoint's architecture
    key_map: KeyMap | None = None  # None: the model's keys are the checkpoint's
    heads: tuple[str, ...] = ()  # keys that may differ (another class count)
    also: tuple[str, ...] = field(default_factory=tuple)  # other architectures that match and trace the same
    modules: int = 0  # module count once built: the simplest of equally matching architectures is preferred
    _built: dict[bool, nn.Module] = field(default_factory=dict, repr=False, compare=False)

    def model(self, meta: bool = True) -> nn.Module:
        """The built model (on the meta device when `meta` and it builds there), built once: verifying and tracing
        share it."""
        if meta not in self._built:
            self._built[meta] = self.build(meta)
            self.modules = sum(1 for _ in self._built[meta].modules())
        return self._built[meta]

    @property
    def identified(self) -> bool:
        """True when found by identification (not given by the user)."""
        return self.how not in GIVEN

    def describe(self) -> str:
        """One line: 'identified as timm:resnet50 (exact key and shape match)'."""
        if self.how == "model spec":
            return f"built from {self.spec}"
        if self.how == "given module":
            return f"{self.spec}, traced as it is"
        if self.how in GIVEN:
            return f"{self.spec} ({self.how})"
        text = f"identified as {self.spec} ({self.how}"
        if self.also:
            others = f"{', '.join(self.also[:3])}{' …' if len(self.also) > 3 else ''}"
            text += f"; {others} {'also matches and places' if len(self.also) == 1 else 'also match and place'} the same"
        return text + ")"


GIVEN = ("given with --arch", "given with arch=", "model spec", "given module")  # how an architecture not identified


def _quiet(fn: Callable[[], nn.Module]) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def _builder(make: Callable[[], nn.Module]) -> Callable[[bool], nn.Module]:
    """A build function that makes the model on the meta device when asked (cpu when that fails)."""
    def build(meta: bool) -> nn.Module:
        if meta:
            try:
                with on_meta():
                    return _quiet(make)
            except Exception:  # noqa: BLE001 - a model that computes values at init builds on cpu
                pass
        return _quiet(make)
    return build


def _verified(arch: Architecture, shapes: Shapes) -> Architecture | None:
    """`arch` with its key map when the built model's keys align with `shapes`, else None."""
    try:
        model = arch.model(True)
    except Exception:  # noqa: BLE001 - a hint naming a model that cannot be built identifies nothing
        return None
    cfg = getattr(model, "pretrained_cfg", None)
    classifier = cfg.get("classifier") if isinstance(cfg, dict) else None
    heads = arch.heads + ((classifier,) if isinstance(classifier, str) else tuple(classifier or ()))
    try:
        arch.key_map = align_model(model, shapes, heads, what=arch.spec)
    except LgtError:
        return None
    return arch


# --- hints ------------------------------------------------------------------------------------------------------


def _module_copy(ckpt: Any) -> Architecture | None:
    """The checkpoint's own pickled model (ultralytics `ema`/`model`), as a float copy."""
    module = next((c.module for c in getattr(ckpt, "copies", ()) if getattr(c, "module", None) is not None), None)
    if module is None:
        return None
    yaml = getattr(module, "yaml", None)
    name = yaml.get("yaml_file") if isinstance(yaml, dict) else None
    package = type(module).__module__.split(".")[0]
    spec = f"{package}:{name}" if name else f"{package}:{type(module).__name__}"

    def build(meta: bool) -> nn.Module:
        return copy.deepcopy(module).float()

    return Architecture(spec, f"the checkpoint's own {type(module).__name__} object", build)


def _timm_arch(ckpt: Any) -> Architecture | None:
    container = getattr(ckpt, "container", None)
    name = container.get("arch") if isinstance(container, Mapping) else None
    if not isinstance(name, str):
        return None
    import timm

    if not timm.is_model(name):
        return None
    return Architecture(f"timm:{name}", "the checkpoint's `arch` entry",
                        _builder(lambda: timm.create_model(name, pretrained=False)))


def _safe_args(args: Any) -> dict[str, Any]:
    """Keyword arguments from a config file that only shape the model (no file, download or hub arguments)."""
    if not isinstance(args, dict):
        return {}
    out = {}
    for k, v in args.items():
        if not isinstance(k, str) or k.startswith("_") or any(u in k.lower() for u in _UNSAFE_ARG):
            continue
        if isinstance(v, (int, float, str, bool, type(None))) or (
                isinstance(v, list) and all(isinstance(x, (int, float, str, bool)) for x in v)):
            out[k] = tuple(v) if isinstance(v, list) else v
    return out


def config_file(path: Path) -> Path | None:
    """The `config.json` of a save_pretrained folder, or beside a checkpoint file."""
    folder = path if path.is_dir() else path.parent
    cfg = folder / "config.json"
    return cfg if cfg.is_file() else None


def _config_hint(path: Path) -> Architecture | None:
    cfg_path = config_file(path)
    if cfg_path is None:
        return None
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict):
        return None
    if isinstance(cfg.get("architecture"), str):  # timm save_for_hf
        import timm

        name = cfg["architecture"]
        if not timm.is_model(name):
            return None
        kwargs = _safe_args(cfg.get("model_args"))
        return Architecture(f"timm:{name}", f"{cfg_path.name}: architecture {name}",
                            _builder(lambda: timm.create_model(name, pretrained=False, **kwargs)))
    if isinstance(cfg.get("_model_class"), str):  # segmentation-models-pytorch save_pretrained
        try:
            import segmentation_models_pytorch as smp
        except ImportError:
            return None
        cls = getattr(smp, cfg["_model_class"], None)
        base = getattr(getattr(smp, "base", None), "SegmentationModel", None)
        if not (isinstance(cls, type) and base is not None and issubclass(cls, base)):
            return None
        kwargs = {**_safe_args(cfg), "encoder_weights": None}
        spec = f"smp:{cfg['_model_class']}/{cfg.get('encoder_name', '?')}"
        return Architecture(spec, f"{cfg_path.name}: _model_class {cfg['_model_class']}",
                            _builder(lambda: cls(**kwargs)))
    names = cfg.get("architectures")
    if isinstance(names, list) and names and isinstance(names[0], str) and "auto_map" not in cfg:
        return _transformers_hint(cfg_path.parent, names[0], f"{cfg_path.name}: architectures {names[0]}")
    return None


def _transformers_hint(folder: Path, name: str, how: str) -> Architecture | None:
    try:
        import transformers
    except ImportError:
        return None
    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        return None

    def make() -> nn.Module:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        for c in (config, getattr(config, "backbone_config", None)):  # never download backbone weights
            if c is not None and getattr(c, "use_pretrained_backbone", False):
                c.use_pretrained_backbone = False
        return cls(config)

    return Architecture(f"transformers:{name}", how, _builder(make))


def _replknet(shapes: Shapes) -> Architecture | None:
    if not any(".large_kernel.lkb_" in k for k in shapes):  # not RepLKNet: spare importing it (and timm)
        return None
    from learngene_tools.models.replknet import guess_variant

    variant = guess_variant(shapes)
    if variant is None:
        return None
    merged = any(k.endswith("lkb_reparam.weight") for k in shapes)

    def make() -> nn.Module:
        import timm

        return timm.create_model(variant, pretrained=False, **({"merged": True} if merged else {}))

    return Architecture(f"timm:{variant}", "RepLKNet variant from its keys", _builder(make), heads=("head",))


# --- exact match against the index ------------------------------------------------------------------------------


def _lookup_views(shapes: Shapes) -> list[dict[str, tuple[int, ...]]]:
    """The key sets to look up: as saved, with save-time renames undone, and with a shared prefix removed."""
    views = [dict(shapes)]
    renamed = dict(shapes)
    for saved, live in SAVE_RENAMES:
        renamed = {k.replace(saved, live): v for k, v in renamed.items()}
    if renamed != views[0]:
        views.append(renamed)
    keys = list(shapes)
    prefix = ""
    while keys and "." in keys[0]:
        head = keys[0][len(prefix):].split(".", 1)[0] + "."
        if not all(k.startswith(prefix + head) for k in keys):
            break
        prefix += head
        views.append({k[len(prefix):]: v for k, v in shapes.items()})
    return views


def index_candidates(shapes: Shapes, notify: Callable[[str], None] | None = None) -> tuple[list[Architecture], int]:
    """Indexed architectures whose keys and shapes equal the checkpoint's (head aside), verified; and how many more
    matched beyond MAX_CANDIDATES."""
    from learngene_tools.architectures import index as arch_index

    index = arch_index.load_index(notify)
    seen: dict[str, arch_index.Entry] = {}
    for view in _lookup_views(shapes):
        for e in index.candidates(view):
            seen.setdefault(e.spec, e)
    order = {s.name: i for i, s in enumerate(arch_index.SOURCES)}
    entries = sorted(seen.values(), key=lambda e: (order[e.spec.split(":", 1)[0]], len(e.spec), e.spec))
    out = []
    for e in entries[:MAX_CANDIDATES]:
        arch = Architecture(e.spec, "exact key and shape match",
                            lambda meta, spec=e.spec: _quiet(lambda: arch_index.build(spec, meta=meta)),
                            heads=tuple(sorted(e.head_keys)))
        verified = _verified(arch, shapes)
        if verified is not None:
            out.append(verified)
    return out, max(0, len(entries) - MAX_CANDIDATES)


def hinted(ckpt: Any, path: Path | None) -> Architecture | None:
    """The architecture the checkpoint names itself (its own model object, `arch`, config.json), verified."""
    shapes = ckpt.shapes
    for hint in (lambda: _module_copy(ckpt), lambda: _timm_arch(ckpt),
                 lambda: _config_hint(path) if path is not None else None, lambda: _replknet(shapes)):
        arch = hint()
        if arch is None:
            continue
        verified = _verified(arch, shapes)
        if verified is not None:
            return verified
    return None


@dataclass
class Identification:
    """What identification found: one hinted architecture, or the exact matches (several when key sets coincide;
    whether they trace the same is the caller's question), and how many more matched than were verified."""

    candidates: list[Architecture]
    more: int = 0


def identify(ckpt: Any, path: Path | None = None, notify: Callable[[str], None] | None = None) -> Identification:
    """The architectures the checkpoint may hold (see the module docstring for the order)."""
    arch = hinted(ckpt, path)
    if arch is not None:
        return Identification([arch])
    return Identification(*index_candidates(ckpt.shapes, notify))


BUILDABLE = ("timm:", "torchvision:", "learngene_tools.")  # specs distillation can build (`specs.build_model`)


def identify_ancestry(path: Path, trust_pickle: bool = False) -> tuple[str, str]:
    """The ancestry's architecture as a spec distillation can build, and how it was found; ModelError when unknown.

    RepLKNet variants are read off their keys; anything else is identified as a transplant target is. Of several
    exact matches the first is taken (timm before torchvision, the shortest name first: resnet50 before resnetaa50);
    they share every weight and their stage outputs.
    """
    import argparse

    import torch

    from learngene_tools.errors import ModelError
    from learngene_tools.io.reading import load_checkpoint

    with torch.serialization.safe_globals([argparse.Namespace]):  # released checkpoints carry their training args
        ckpt = load_checkpoint(path, trust_pickle=trust_pickle)
    rep = _replknet(ckpt.shapes)
    if rep is not None:
        return rep.spec.split(":", 1)[1], rep.how
    found = identify(ckpt, path)
    options = [a for a in found.candidates if a.spec.startswith(BUILDABLE)]
    if not options or found.more:
        why = (f"its keys match {', '.join(a.spec for a in found.candidates)}, which lgt cannot distil from"
               if found.candidates and not found.more else
               f"its keys match {len(found.candidates) + found.more} architectures" if found.more else
               "no model that timm, torchvision or the installed descendant packages build has its keys and shapes")
        raise ModelError(f"{path}: the ancestry's architecture was not identified ({why}); pass --arch "
                         "(replknet_31b, any timm name, torchvision:NAME or pkg.module:factory)")
    return options[0].spec, options[0].how
