"""The learngene bundle: a safetensors file whose metadata describes every layer and where it came from.

Metadata keys (strings only, as safetensors requires):
  learngene.schema      schema version ("1")
  learngene.layers      JSON list of layer records (see `LayerRecord`)
  learngene.provenance  JSON object: ancestry, auxiliary, distillation, selection, tool, tensor_hash

Reading and validating the header needs no torch; only `load_tensors` imports it.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from learngene_tools.errors import InvalidFileError, LgtError, NotFoundError
from learngene_tools.io.header import SafetensorsHeader, looks_like_safetensors, parse_header, read_header, tensor_hash

SCHEMA_KEY = "learngene.schema"
LAYERS_KEY = "learngene.layers"
PROVENANCE_KEY = "learngene.provenance"
SCHEMA_VERSION = "1"
BN_PARTS = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class LayerRecord:
    """One learngene layer: a 3x3 conv from the auxiliary model, with its place in the hierarchy."""

    id: str  # "s{stage}.{position}", also the tensor name prefix
    stage: int  # 1-based auxiliary stage
    position: int  # index within its continuous run
    run_length: int
    anchor: str  # "start" | "end": which edge of its stage the run touches
    shape: tuple[int, int, int, int]  # [out, in, k, k]
    stride: int
    in_reduction: int  # input stride relative to the image
    reduction: int  # output stride relative to the image
    source_key: str  # conv weight key in the auxiliary model
    has_bn: bool
    l2_norms: tuple[float, ...]  # per output kernel, over (in, k, k)

    @property
    def weight_name(self) -> str:
        """Tensor name of the conv weight."""
        return f"{self.id}.weight"

    def bn_name(self, part: str) -> str:
        """Tensor name of one BN tensor (weight, bias, running_mean, running_var)."""
        return f"{self.id}.bn.{part}"

    def tensor_names(self) -> list[str]:
        """Every tensor this layer owns in the bundle."""
        return [self.weight_name] + ([self.bn_name(p) for p in BN_PARTS] if self.has_bn else [])

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["shape"], d["l2_norms"] = list(self.shape), list(self.l2_norms)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "LayerRecord":
        """Parse one record; raises KeyError/TypeError/ValueError on a malformed one."""
        shape = tuple(int(x) for x in d["shape"])
        if len(shape) != 4:
            raise ValueError(f"shape {list(shape)} is not a conv weight shape")
        return cls(
            id=str(d["id"]), stage=int(d["stage"]), position=int(d["position"]), run_length=int(d["run_length"]),
            anchor=str(d["anchor"]), shape=shape, stride=int(d["stride"]),  # type: ignore[arg-type]
            in_reduction=int(d["in_reduction"]), reduction=int(d["reduction"]), source_key=str(d["source_key"]),
            has_bn=bool(d["has_bn"]), l2_norms=tuple(float(x) for x in d["l2_norms"]),
        )


@dataclass(frozen=True)
class Bundle:
    """A validated bundle: layer records, provenance, and (once loaded) tensors."""

    source: str
    layers: tuple[LayerRecord, ...]
    provenance: dict[str, Any]
    header: SafetensorsHeader | None = None
    tensors: dict[str, Any] = field(default_factory=dict)

    @property
    def stages(self) -> list[int]:
        """The auxiliary stages the learngene covers, in order."""
        return sorted({r.stage for r in self.layers})

    def runs(self) -> list[list[LayerRecord]]:
        """Layers grouped into their continuous runs (one per stage), each in position order."""
        return [sorted((r for r in self.layers if r.stage == s), key=lambda r: r.position) for s in self.stages]

    @property
    def num_params(self) -> int:
        """Conv weight parameters in the learngene."""
        return sum(r.shape[0] * r.shape[1] * r.shape[2] * r.shape[3] for r in self.layers)


def bundle_from_header(header: SafetensorsHeader) -> Bundle:
    """Validate a bundle's metadata against its header's tensors; no tensor data is read."""
    src, meta = header.source, header.metadata
    if SCHEMA_KEY not in meta:
        raise InvalidFileError(
            f"{src}: not a learngene bundle (no '{SCHEMA_KEY}' in its metadata); "
            "make one with `lgt select AUX.safetensors` or `lgt extract`"
        )
    if meta[SCHEMA_KEY] != SCHEMA_VERSION:
        raise InvalidFileError(
            f"{src}: bundle schema version {meta[SCHEMA_KEY]!r} is not supported (this lgt reads {SCHEMA_VERSION!r}); "
            "upgrade learngene_tools or re-export the bundle"
        )
    try:
        raw_layers = json.loads(meta.get(LAYERS_KEY, ""))
        provenance = json.loads(meta.get(PROVENANCE_KEY, ""))
    except json.JSONDecodeError as e:
        raise InvalidFileError(f"{src}: bad bundle metadata JSON ({e.msg} at char {e.pos}); the file is damaged, re-export it") from None
    if not isinstance(raw_layers, list) or not raw_layers or not isinstance(provenance, dict):
        raise InvalidFileError(f"{src}: bad bundle metadata ('{LAYERS_KEY}' must be a non-empty list, '{PROVENANCE_KEY}' an object)")
    layers = []
    for i, d in enumerate(raw_layers):
        try:
            layers.append(LayerRecord.from_json(d))
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidFileError(f"{src}: bad bundle metadata: layer record {i} is malformed ({type(e).__name__}: {e})") from None
    expected: set[str] = set()
    for r in layers:
        if len(r.l2_norms) != r.shape[0]:
            raise InvalidFileError(f"{src}: bad bundle metadata: layer {r.id} has {len(r.l2_norms)} norms for {r.shape[0]} kernels")
        for name in r.tensor_names():
            e = header.tensors.get(name)
            if e is None:
                raise InvalidFileError(f"{src}: invalid bundle: tensor {name!r} of layer {r.id} is missing")
            want = r.shape if name == r.weight_name else (r.shape[0],)
            if e.shape != tuple(want):
                raise InvalidFileError(f"{src}: invalid bundle: tensor {name!r} has shape {list(e.shape)}, its record says {list(want)}")
            expected.add(name)
    extra = sorted(set(header.tensors) - expected)
    if extra:
        raise InvalidFileError(f"{src}: invalid bundle: tensors {', '.join(extra[:5])} belong to no layer record")
    if "tensor_hash" not in provenance:
        raise InvalidFileError(f"{src}: invalid bundle: provenance has no tensor_hash")
    return Bundle(src, tuple(layers), provenance, header)


def verify_hash(bundle: Bundle, f: Any) -> None:
    """Recompute the tensor hash from the file object `f` and compare it with the recorded one."""
    assert bundle.header is not None
    got = tensor_hash(f, bundle.header)
    if got != bundle.provenance["tensor_hash"]:
        raise InvalidFileError(
            f"{bundle.source}: corrupted bundle: tensor bytes hash to {got[:19]}…, the bundle records "
            f"{str(bundle.provenance['tensor_hash'])[:19]}…; download or export it again"
        )


def read_bundle_header(path: str | Path, verify: bool = True) -> Bundle:
    """Read and validate a bundle's header (and, with `verify`, its tensor hash) without loading tensors."""
    if not Path(path).is_file():
        raise NotFoundError(f"{path}: no such file" if not Path(path).exists() else f"{path}: is not a file")
    try:
        header = read_header(path)
    except LgtError as e:
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:2] == b"PK" or head[:1] == b"\x80":
            raise InvalidFileError(f"{path}: is a PyTorch checkpoint, not a learngene bundle; the bundle (the .safetensors "
                           "file `lgt select`/`lgt extract` writes) comes first: lgt transplant BUNDLE TARGET") from None
        raise InvalidFileError(f"{e}; a learngene bundle is the .safetensors file `lgt select` or `lgt extract` writes") from None
    bundle = bundle_from_header(header)
    if verify:
        with open(path, "rb") as f:
            verify_hash(bundle, f)
    return bundle


def read_bundle(path: str | Path) -> Bundle:
    """Read, validate and hash-check a bundle, loading its tensors."""
    from safetensors.torch import load_file

    bundle = read_bundle_header(path, verify=True)
    tensors = load_file(str(path))
    return Bundle(bundle.source, bundle.layers, bundle.provenance, bundle.header, tensors)


def encode_bundle(layers: list[LayerRecord], tensors: Mapping[str, Any], provenance: Mapping[str, Any]) -> bytes:
    """Serialise a bundle to bytes (deterministically); the tensor hash is computed and added to the provenance."""
    from learngene_tools.io.tensors import encode_safetensors

    def serialise(prov: Mapping[str, Any]) -> bytes:
        meta = {
            SCHEMA_KEY: SCHEMA_VERSION,
            LAYERS_KEY: json.dumps([r.to_json() for r in layers], sort_keys=True),
            PROVENANCE_KEY: json.dumps(prov, sort_keys=True),
        }
        return encode_safetensors(tensors, meta)

    def header_of(data: bytes) -> SafetensorsHeader:
        n = int.from_bytes(data[:8], "little")
        return parse_header(data[8 : 8 + n], len(data), "<bundle>")

    draft = serialise({**provenance, "tensor_hash": ""})
    final = serialise({**provenance, "tensor_hash": tensor_hash(io.BytesIO(draft), header_of(draft))})
    bundle_from_header(header_of(final))
    return final


def write_bundle(path: str | Path, layers: list[LayerRecord], tensors: Mapping[str, Any], provenance: Mapping[str, Any]) -> None:
    """Write a bundle atomically (temporary file, then rename)."""
    from learngene_tools.io.files import atomic_path

    data = encode_bundle(layers, tensors, provenance)
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(data)


def _stats(xs: tuple[float, ...]) -> dict[str, float]:
    return {"min": min(xs), "mean": sum(xs) / len(xs), "max": max(xs)}


def bundle_summary(bundle: Bundle, verified: bool) -> dict[str, Any]:
    """JSON-ready description of a bundle (header data only)."""
    return {
        "kind": "learngene bundle",
        "file": bundle.source,
        "size_bytes": bundle.header.file_size if bundle.header else None,
        "schema": SCHEMA_VERSION,
        "tensor_hash": bundle.provenance.get("tensor_hash"),
        "hash_verified": verified,
        "params": bundle.num_params,
        "stages": bundle.stages,
        "layers": [
            {"id": r.id, "stage": r.stage, "position": r.position, "run_length": r.run_length, "anchor": r.anchor,
             "shape": list(r.shape), "stride": r.stride, "reduction": r.reduction, "source_key": r.source_key,
             "has_bn": r.has_bn, "l2_norm": _stats(r.l2_norms)}
            for r in bundle.layers
        ],
        "provenance": bundle.provenance,
    }


def is_bundle_file(path: str | Path) -> bool:
    """True when `path` is a safetensors file whose metadata marks it as a learngene bundle."""
    return looks_like_safetensors(path) and SCHEMA_KEY in read_header(path).metadata


def describe_bundle(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Describe a local bundle from its header; `verify` also re-hashes the tensor bytes (no torch needed)."""
    return bundle_summary(read_bundle_header(path, verify=verify), verified=verify)
