"""An index of the architectures the installed packages can build: each one's state_dict key/shape fingerprint.

Identification (`learngene_tools.architectures.identify`) looks a checkpoint's key/shape set up here instead of
building every model. An entry keeps the fingerprint of the model's keys without its classifier
head, and the head's keys with the class count left open, so a checkpoint fine-tuned to another
number of classes still matches. Models are built on the meta device (no memory, no weight
initialisation). There is one segment per source package and version: the package ships segments
for the versions it was released with; any other version is indexed once into the user's cache
(`LGT_CACHE_DIR`, else `$XDG_CACHE_HOME/learngene_tools`, else `~/.cache/learngene_tools`).

Rebuild the shipped index: `python -m learngene_tools.architectures.index --ship`.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from torch import nn

from learngene_tools.architectures.keysets import fingerprint, saved_shapes
from learngene_tools.architectures.tracing import on_meta
from learngene_tools.settings import cache_dir

FORMAT = 1
SHIPPED = Path(__file__).parent.parent / "data" / "arch_index.json.gz"
OWN_MODELS = ("replknet", "lgt_aux")  # registered with timm by this package: identified by their own rules

Head = tuple[tuple[str, tuple[int | None, ...]], ...]  # (key, shape with None for the class count)


@dataclass(frozen=True)
class Entry:
    """One buildable architecture: its spec, the fingerprint of its non-head keys, and its head."""

    spec: str
    body: str
    head: Head

    @property
    def head_keys(self) -> frozenset[str]:
        """The head's tensor keys."""
        return frozenset(k for k, _ in self.head)

    def head_fits(self, shapes: Mapping[str, tuple[int, ...]]) -> bool:
        """True when `shapes` holds this entry's head (any class count) or no head at all."""
        present = [k for k, _ in self.head if k in shapes]
        if not present:
            return True
        if len(present) != len(self.head):
            return False
        return all(len(shapes[k]) == len(p) and all(w is None or w == h for w, h in zip(p, shapes[k]))
                   for k, p in self.head)


# --- sources ----------------------------------------------------------------------------------------------------


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


@dataclass(frozen=True)
class Source:
    """A package whose models are indexed: how to list, build and version them."""

    name: str
    requires: tuple[str, ...]  # import names that must be installed
    specs: Callable[[], list[str]]
    build: Callable[[str, int | None], nn.Module]  # (spec, class count or None for the default) -> model
    versions: tuple[str, ...]  # distribution names whose versions make up the segment's version
    probe_classes: int | None = 7  # a second class count, to find the head by building twice (None: use timm's cfg)

    def installed(self) -> bool:
        """True when every package the source needs can be imported."""
        return all(importlib.util.find_spec(p) is not None for p in self.requires)

    def version(self) -> str:
        """The installed versions this segment depends on, e.g. 'timm 1.0.31'."""
        return ", ".join(f"{d} {_version(d)}" for d in self.versions)


def _timm_specs() -> list[str]:
    import timm

    return [f"timm:{n}" for n in timm.list_models() if not n.startswith(OWN_MODELS)]


def _build_timm(spec: str, classes: int | None) -> nn.Module:
    import timm

    kwargs = {} if classes is None else {"num_classes": classes}
    return timm.create_model(spec.split(":", 1)[1], pretrained=False, **kwargs)


def _torchvision_specs() -> list[str]:
    import torchvision.models as tvm
    import torchvision.models.quantization as q

    quantized = set(tvm.list_models(module=q))
    return [f"torchvision:{n}" for n in tvm.list_models() if n not in quantized]


def _build_torchvision(spec: str, classes: int | None) -> nn.Module:
    import torchvision

    builder = torchvision.models.get_model_builder(spec.split(":", 1)[1])
    kwargs = {} if classes is None else {"num_classes": classes}
    try:
        return builder(weights=None, weights_backbone=None, **kwargs)
    except TypeError:
        return builder(weights=None, **kwargs)


ULTRALYTICS_CFGS = tuple(f"{v}{s}.yaml" for v in ("yolov8", "yolo11") for s in "nsmlx")


def _build_ultralytics(spec: str, classes: int | None) -> nn.Module:
    os.environ.setdefault("YOLO_VERBOSE", "False")
    from ultralytics.nn.tasks import DetectionModel

    return DetectionModel(spec.split(":", 1)[1], nc=classes or 80, verbose=False)


def _build_transformers(spec: str, classes: int | None) -> nn.Module:
    from transformers import DetrConfig, DetrForObjectDetection

    kwargs = {} if classes is None else {"num_labels": classes}
    return DetrForObjectDetection(DetrConfig(use_pretrained_backbone=False, **kwargs))


SMP_ARCHS = ("Unet", "UnetPlusPlus", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus", "Linknet", "PAN", "MAnet", "UPerNet")
SMP_ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2", "efficientnet-b0")


def _smp_specs() -> list[str]:
    return [f"smp:{a}/{e}" for a in SMP_ARCHS for e in SMP_ENCODERS]


def _build_smp(spec: str, classes: int | None) -> nn.Module:
    import segmentation_models_pytorch as smp

    arch, encoder = spec.split(":", 1)[1].split("/")
    return smp.create_model(arch, encoder_name=encoder, encoder_weights=None, **({} if classes is None else
                                                                                  {"classes": classes}))


SOURCES = (
    Source("timm", ("timm",), _timm_specs, _build_timm, ("timm",), probe_classes=None),
    Source("torchvision", ("torchvision",), _torchvision_specs, _build_torchvision, ("torchvision",)),
    Source("ultralytics", ("ultralytics",), lambda: [f"ultralytics:{c}" for c in ULTRALYTICS_CFGS],
           _build_ultralytics, ("ultralytics",)),
    Source("transformers", ("transformers", "timm"), lambda: ["transformers:DetrForObjectDetection"],
           _build_transformers, ("transformers", "timm")),
    Source("smp", ("segmentation_models_pytorch",), _smp_specs, _build_smp, ("segmentation-models-pytorch", "timm")),
)


def source_of(spec: str) -> Source:
    """The source that builds `spec`."""
    prefix = spec.split(":", 1)[0]
    for s in SOURCES:
        if s.name == prefix:
            return s
    raise KeyError(spec)


def build(spec: str, classes: int | None = None, meta: bool = True) -> nn.Module:
    """Build an indexed architecture (on the meta device when `meta` and the model allows it, else on cpu)."""
    src = source_of(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if meta:
            try:
                with on_meta():
                    return src.build(spec, classes)
            except Exception:  # noqa: BLE001 - some models compute values at init (ultralytics' strides): use cpu
                pass
        return src.build(spec, classes)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """State-dict shapes under the names the model's library saves (what a checkpoint file holds)."""
    return saved_shapes(model)[0]


def _timm_head(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> Head:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    n = getattr(model, "num_classes", None)
    out = []
    for k, s in shapes.items():
        if any(k.startswith(h + ".") for h in heads):
            out.append((k, tuple(None if (i == 0 and d == n) else d for i, d in enumerate(s))))
    return tuple(sorted(out))


def index_entry(src: Source, spec: str) -> Entry:
    """Build `spec` (twice, with two class counts, unless timm's cfg names the head) and fingerprint it."""
    model = build(spec)
    shapes = _shapes(model)
    if src.probe_classes is None:
        head = _timm_head(model, shapes)
    else:
        try:
            other = _shapes(build(spec, src.probe_classes))
        except TypeError:  # no class count to choose (optical flow): no head
            other = shapes
        head = tuple(sorted(
            (k, tuple(None if a != b else a for a, b in zip(s, other[k]))) for k, s in shapes.items()
            if k in other and other[k] != s
        ))
        head += tuple(sorted((k, s) for k, s in shapes.items() if k not in other))  # type: ignore[misc]
    keys = {k for k, _ in head}
    return Entry(spec, fingerprint((k, s) for k, s in shapes.items() if k not in keys), head)


def build_segment(src: Source, progress: Callable[[int, int], None] | None = None) -> dict:
    """Index every model of one source (models that fail to build are listed, not indexed)."""
    specs = src.specs()
    entries, failed = [], []
    for i, spec in enumerate(specs):
        try:
            e = index_entry(src, spec)
            entries.append([e.spec, e.body, [[k, list(s)] for k, s in e.head]])
        except Exception as ex:  # noqa: BLE001 - a model that cannot be built cannot be identified
            failed.append([spec, f"{type(ex).__name__}: {str(ex)[:160]}"])
        if progress is not None:
            progress(i + 1, len(specs))
    return {"version": src.version(), "entries": entries, "failed": failed}


# --- loading --------------------------------------------------------------------------------------------------


def _read(path: Path) -> dict:
    try:
        with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) and data.get("format") == FORMAT else {}
    except (OSError, ValueError, EOFError):
        return {}


def _cache_file(src: Source) -> Path:
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in src.version())
    return cache_dir() / f"arch_index-{src.name}-{safe}.json"


def _segment(src: Source, notify: Callable[[str], None] | None) -> dict:
    shipped = _read(SHIPPED).get("segments", {}).get(src.name)
    version = src.version()
    if shipped and shipped.get("version") == version:
        return shipped
    path = _cache_file(src)
    cached = _read(path).get("segments", {}).get(src.name)
    if cached and cached.get("version") == version:
        return cached
    if notify is not None:
        notify(f"indexing the models of {version} for identification (once; cached in {path.parent})")
    seg = build_segment(src)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"format": FORMAT, "segments": {src.name: seg}}))
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs the next run the same time
    return seg


@dataclass
class Index:
    """Entries by body fingerprint, and the distinct heads to try removing from a checkpoint's keys."""

    by_body: dict[str, list[Entry]]
    heads: list[frozenset[str]]

    def candidates(self, shapes: Mapping[str, tuple[int, ...]]) -> list[Entry]:
        """Entries whose keys and shapes equal `shapes`' except for a head with another class count (or no head),
        in source order."""
        found: dict[str, Entry] = {}
        keys = set(shapes)
        for head in self.heads:
            if not head <= keys:
                continue
            body = fingerprint((k, tuple(s)) for k, s in shapes.items() if k not in head)
            for e in self.by_body.get(body, ()):
                if e.spec in found or (head and e.head_keys != head):
                    continue
                if e.head_fits(shapes):
                    found[e.spec] = e
        return list(found.values())


_LOADED: list[Index] = []


def load_index(notify: Callable[[str], None] | None = None) -> Index:
    """The index of every installed source (segments built and cached when not shipped for its version)."""
    if _LOADED:
        return _LOADED[0]
    by_body: dict[str, list[Entry]] = {}
    heads: set[frozenset[str]] = {frozenset()}
    for src in SOURCES:
        if not src.installed():
            continue
        for spec, body, head in _segment(src, notify)["entries"]:
            e = Entry(spec, body, tuple((k, tuple(s)) for k, s in head))
            by_body.setdefault(body, []).append(e)
            heads.add(e.head_keys)
    _LOADED.append(Index(by_body, sorted(heads, key=lambda h: (len(h), sorted(h)))))
    return _LOADED[0]


def ship(sources: Iterable[str] | None = None) -> None:
    """Rebuild the shipped index for the installed versions (all sources, or the named ones) and report."""
    data = _read(SHIPPED) or {"format": FORMAT, "segments": {}}
    for src in SOURCES:
        if (sources and src.name not in sources) or not src.installed():
            continue
        t0 = time.time()

        def progress(i: int, n: int, name: str = src.name) -> None:
            if i % 100 == 0 or i == n:
                print(f"{name}: {i}/{n} ({time.time() - t0:.0f} s)", file=sys.stderr)

        seg = build_segment(src, progress)
        data["segments"][src.name] = seg
        print(f"{src.name} ({seg['version']}): {len(seg['entries'])} indexed, {len(seg['failed'])} failed",
              file=sys.stderr)
    SHIPPED.parent.mkdir(exist_ok=True)
    with gzip.GzipFile(SHIPPED, "wb", mtime=0) as f:
        f.write(json.dumps(data, sort_keys=True, separators=(",", ":")).encode())


if __name__ == "__main__":
    if "--ship" in sys.argv:
        ship([a for a in sys.argv[1:] if not a.startswith("--")] or None)
    else:
        print(__doc__)
