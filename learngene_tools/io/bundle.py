"""The learngene bundle: a safetensors file whose metadata describes every layer and where it came from.

Metadata keys (strings only, as safetensors requires):
  learngene.schema      schema version: "2" (written), "1" (still read)
  learngene.layers      JSON list of layer records (see `LayerRecord`)
  learngene.provenance  JSON object: ancestry, auxiliary, distillation, selection, tool, tensor_hash
  learngene.hash        schema 2: sha256 over the canonical layer records and provenance (the provenance
                        holds the tensor hash, so this one hash covers everything the bundle says)

A schema-1 bundle has no `learngene.hash`: its tensors are hashed, its records and provenance are
not, and `lgt inspect` says so. Reading and validating the header needs no torch; only loading
the tensors imports it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from learngene_tools.errors import InvalidFileError
from learngene_tools.io.files import check_input, open_input, reading
from learngene_tools.io.header import (
    FLOAT_DTYPES,
    SafetensorsHeader,
    hash_entry_prefix,
    header_length,
    looks_like_safetensors,
    parse_header,
    read_header,
    tensor_hash,
)

SCHEMA_KEY = "learngene.schema"
LAYERS_KEY = "learngene.layers"
PROVENANCE_KEY = "learngene.provenance"
HASH_KEY = "learngene.hash"
SCHEMA_VERSION = "2"
READABLE_SCHEMAS = ("1", "2")
BN_PARTS = ("weight", "bias", "running_mean", "running_var")
UNPROTECTED_WARNING = ("schema-1 bundle: its layer records and provenance are not covered by any hash (metadata "
                       "unprotected); re-export it with this lgt (`lgt select`, or upgrade_bundle) to protect them")

# what a record may say: the auxiliary model has three stages of plain convs
STAGES = (1, 2, 3)
MAX_CHANNELS = 1 << 16
MAX_KERNEL = 64
MAX_STRIDE = 64
MAX_REDUCTION = 1 << 16
MAX_RUN = 1024
MAX_LAYERS = 4096
_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


MAX_JSON_DEPTH = 32  # records are 3 levels deep; provenance a few more


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else str(v)
    return text if len(text) <= 40 else text[:40] + "…"


def _depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: never a RecursionError)."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        v, d = todo.pop()
        deepest = max(deepest, d)
        if isinstance(v, dict):
            todo += [(x, d + 1) for x in v.values()]
        elif isinstance(v, list):
            todo += [(x, d + 1) for x in v]
    return deepest


def _int_in(d: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    v = d[key]
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"{key} must be an integer from {lo} to {hi}, not {_short(v)}")
    return v


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
    def from_json(cls, d: Any) -> "LayerRecord":
        """Parse and range-check one record; raises ValueError (or KeyError) naming what is wrong."""
        if not isinstance(d, Mapping):
            raise ValueError("a layer record must be a JSON object")
        names = [f.name for f in dataclasses.fields(cls)]
        missing, extra = [n for n in names if n not in d], sorted(set(d) - set(names))
        if missing or extra:
            raise ValueError("; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                                     extra and f"unknown {', '.join(map(str, extra[:5]))}"])))
        stage = _int_in(d, "stage", STAGES[0], STAGES[-1])
        run_length = _int_in(d, "run_length", 1, MAX_RUN)
        position = _int_in(d, "position", 0, run_length - 1)
        stride = _int_in(d, "stride", 1, MAX_STRIDE)
        in_reduction = _int_in(d, "in_reduction", 1, MAX_REDUCTION)
        reduction = _int_in(d, "reduction", 1, MAX_REDUCTION)
        if reduction != in_reduction * stride:
            raise ValueError(f"reduction {reduction} is not in_reduction {in_reduction} x stride {stride}")
        shape = _shape(d["shape"])
        if d["id"] != f"s{stage}.{position}":
            raise ValueError(f"id {_short(d['id'])} does not match stage {stage}, position {position}")
        if d["anchor"] not in ("start", "end"):
            raise ValueError(f"anchor must be \"start\" or \"end\", not {_short(d['anchor'])}")
        if not isinstance(d["source_key"], str) or not 0 < len(d["source_key"]) <= 512:
            raise ValueError("source_key must be a non-empty string")
        if type(d["has_bn"]) is not bool:
            raise ValueError(f"has_bn must be true or false, not {_short(d['has_bn'])}")
        return cls(
            id=d["id"], stage=stage, position=position, run_length=run_length, anchor=d["anchor"], shape=shape,
            stride=stride, in_reduction=in_reduction, reduction=reduction, source_key=d["source_key"],
            has_bn=d["has_bn"], l2_norms=_norms(d["l2_norms"], shape[0]),
        )


def _shape(v: Any) -> tuple[int, int, int, int]:
    if not isinstance(v, list) or len(v) != 4 or not all(type(x) is int for x in v):
        raise ValueError(f"shape must be 4 integers [out, in, k, k], not {_short(v)}")
    out, inp, kh, kw = v
    if not (1 <= out <= MAX_CHANNELS and 1 <= inp <= MAX_CHANNELS):
        raise ValueError(f"shape {v} must have 1 to {MAX_CHANNELS} kernels and input channels")
    if kh != kw or not 1 <= kh <= MAX_KERNEL:
        raise ValueError(f"shape {v} must have a square kernel of 1 to {MAX_KERNEL}")
    return out, inp, kh, kw


def _norms(v: Any, kernels: int) -> tuple[float, ...]:
    if not isinstance(v, list) or len(v) != kernels:
        n = len(v) if isinstance(v, list) else "no list of"
        raise ValueError(f"has {n} l2_norms for {kernels} kernels")
    for x in v:
        if type(x) not in (int, float) or not math.isfinite(x) or x < 0:
            raise ValueError(f"l2_norms must be finite non-negative numbers, not {_short(x)}")
    return tuple(float(x) for x in v)


@dataclass(frozen=True)
class Bundle:
    """A validated bundle: layer records, provenance, and (once loaded) tensors."""

    source: str
    layers: tuple[LayerRecord, ...]
    provenance: dict[str, Any]
    header: SafetensorsHeader | None = None
    tensors: dict[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA_VERSION
    metadata_hash: str | None = None  # schema 2: the verified learngene.hash; None for schema 1

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

    @property
    def metadata_protected(self) -> bool:
        """True when a hash covers the records and provenance (schema 2)."""
        return self.metadata_hash is not None


def metadata_hash(layers: list[LayerRecord] | tuple[LayerRecord, ...], provenance: Mapping[str, Any]) -> str:
    """Schema 2's learngene.hash: sha256 over the canonical JSON of the layer records and the provenance."""
    doc = {"schema": SCHEMA_VERSION, "layers": [r.to_json() for r in layers], "provenance": provenance}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(b"learngene bundle metadata\n" + text.encode("ascii")).hexdigest()


def _json_value(src: str, key: str, text: str) -> Any:
    try:
        value = json.loads(text)
        if _depth(value) > MAX_JSON_DEPTH:
            raise RecursionError
        return value
    except json.JSONDecodeError as e:
        raise InvalidFileError(f"{src}: bad bundle metadata JSON in '{key}' ({e.msg} at char {e.pos}); "
                               "the file is damaged, re-export it") from None
    except (ValueError, RecursionError) as e:
        why = f"nested deeper than {MAX_JSON_DEPTH} levels" if isinstance(e, RecursionError) else str(e)[:80]
        raise InvalidFileError(f"{src}: bad bundle metadata JSON in '{key}' ({why}); the file is damaged, "
                               "re-export it") from None


def _check_runs(src: str, layers: list[LayerRecord]) -> None:
    """Each stage's records form one continuous run: positions 0..n-1, one anchor, chained strides and channels."""
    ids = [r.id for r in layers]
    if len(set(ids)) != len(ids):
        raise InvalidFileError(f"{src}: bad bundle metadata: layer ids repeat ({', '.join(ids)})")
    for stage in sorted({r.stage for r in layers}):
        run = sorted((r for r in layers if r.stage == stage), key=lambda r: r.position)
        if [r.position for r in run] != list(range(run[0].run_length)) or len({(r.run_length, r.anchor) for r in run}) != 1:
            raise InvalidFileError(f"{src}: bad bundle metadata: stage {stage}'s layers are not one continuous run "
                                   f"(positions {[r.position for r in run]}, run_length {run[0].run_length})")
        for prev, r in zip(run, run[1:]):
            if r.in_reduction != prev.reduction or r.shape[1] != prev.shape[0]:
                raise InvalidFileError(f"{src}: bad bundle metadata: layer {r.id} does not continue {prev.id} "
                                       f"(input stride {r.in_reduction} vs {prev.reduction}, input channels "
                                       f"{r.shape[1]} vs {prev.shape[0]})")


def _check_tensors(src: str, header: SafetensorsHeader, layers: list[LayerRecord]) -> None:
    """Every record's tensors exist with its shape and a float dtype, and no tensor is left over."""
    expected: set[str] = set()
    for r in layers:
        for name in r.tensor_names():
            e = header.tensors.get(name)
            if e is None:
                raise InvalidFileError(f"{src}: invalid bundle: tensor {name!r} of layer {r.id} is missing")
            want = r.shape if name == r.weight_name else (r.shape[0],)
            if e.shape != tuple(want):
                raise InvalidFileError(f"{src}: invalid bundle: tensor {name!r} has shape {list(e.shape)}, "
                                       f"its record says {list(want)}")
            if e.dtype not in FLOAT_DTYPES:
                raise InvalidFileError(f"{src}: invalid bundle: tensor {name!r} is {e.dtype}; learngene tensors are "
                                       f"floating point ({', '.join(FLOAT_DTYPES)})")
            expected.add(name)
    extra = sorted(set(header.tensors) - expected)
    if extra:
        raise InvalidFileError(f"{src}: invalid bundle: tensors {', '.join(extra[:5])} belong to no layer record")


def bundle_from_header(header: SafetensorsHeader) -> Bundle:
    """Validate a bundle's metadata against its header's tensors (and its metadata hash); no tensor data is read."""
    src, meta = header.source, header.metadata
    if SCHEMA_KEY not in meta:
        raise InvalidFileError(
            f"{src}: not a learngene bundle (no '{SCHEMA_KEY}' in its metadata); "
            "make one with `lgt select AUX.safetensors` or `lgt extract`"
        )
    schema = meta[SCHEMA_KEY]
    if schema not in READABLE_SCHEMAS:
        raise InvalidFileError(
            f"{src}: bundle schema version {schema[:20]!r} is not supported (this lgt reads "
            f"{' and '.join(map(repr, READABLE_SCHEMAS))}); upgrade learngene_tools or re-export the bundle"
        )
    raw_layers = _json_value(src, LAYERS_KEY, meta.get(LAYERS_KEY, ""))
    provenance = _json_value(src, PROVENANCE_KEY, meta.get(PROVENANCE_KEY, ""))
    if not isinstance(raw_layers, list) or not 0 < len(raw_layers) <= MAX_LAYERS or not isinstance(provenance, dict):
        raise InvalidFileError(f"{src}: bad bundle metadata ('{LAYERS_KEY}' must be a list of 1 to {MAX_LAYERS} "
                               f"records, '{PROVENANCE_KEY}' an object)")
    layers = []
    for i, d in enumerate(raw_layers):
        try:
            layers.append(LayerRecord.from_json(d))
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidFileError(f"{src}: bad bundle metadata: layer record {i} is malformed ({e})") from None
    _check_runs(src, layers)
    _check_tensors(src, header, layers)
    if not isinstance(provenance.get("tensor_hash"), str) or not _HASH_RE.match(provenance["tensor_hash"]):
        raise InvalidFileError(f"{src}: invalid bundle: provenance has no tensor_hash (sha256:<64 hex digits>)")
    recorded = None
    if schema != "1":
        recorded = meta.get(HASH_KEY)
        try:
            ok = recorded == metadata_hash(layers, provenance)
        except (ValueError, RecursionError):
            ok = False
        if not ok:
            raise InvalidFileError(
                f"{src}: corrupted bundle: its layer records or provenance do not match its '{HASH_KEY}' (changed "
                "after export); download or export it again")
    return Bundle(src, tuple(layers), provenance, header, schema=schema, metadata_hash=recorded)


def verify_hash(bundle: Bundle, f: Any) -> None:
    """Recompute the tensor hash from the file object `f` (checking for inf/NaN on the way) and compare."""
    assert bundle.header is not None
    got = tensor_hash(f, bundle.header, finite=bundle.header.tensors)
    if got != bundle.provenance["tensor_hash"]:
        raise InvalidFileError(
            f"{bundle.source}: corrupted bundle: tensor bytes hash to {got[:19]}…, the bundle records "
            f"{str(bundle.provenance['tensor_hash'])[:19]}…; download or export it again"
        )


def _not_a_bundle(path: str | Path, error: InvalidFileError) -> InvalidFileError:
    """The header error, with what to do when the file is a checkpoint given where a bundle goes."""
    with open_input(path) as f, reading(path):
        head = f.read(2)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return InvalidFileError(f"{path}: is a PyTorch checkpoint, not a learngene bundle; the bundle (the "
                                ".safetensors file `lgt select`/`lgt extract` writes) comes first: "
                                "lgt transplant BUNDLE TARGET")
    return InvalidFileError(f"{error}; a learngene bundle is the .safetensors file `lgt select` or `lgt extract` writes")


def read_bundle_header(path: str | Path, verify: bool = True) -> Bundle:
    """Read and validate a bundle's header (and, with `verify`, its tensor bytes) without loading tensors."""
    check_input(path)
    try:
        header = read_header(path)
    except InvalidFileError as e:
        raise _not_a_bundle(path, e) from None
    bundle = bundle_from_header(header)
    if verify:
        with open_input(path) as f:
            verify_hash(bundle, f)
    return bundle


def _tensors_from_bytes(data: bytes, header: SafetensorsHeader) -> dict[str, Any]:
    import torch

    from learngene_tools.io.tensors import ST_TO_TORCH

    buf = bytearray(data)
    out = {}
    for name, e in header.tensors.items():
        dtype = ST_TO_TORCH[e.dtype]
        count = e.nbytes // torch.empty((), dtype=dtype).element_size()
        out[name] = torch.frombuffer(buf, dtype=dtype, count=count, offset=e.start).reshape(e.shape).clone()
    return out


def _check_values(bundle: Bundle, tensors: Mapping[str, Any]) -> None:
    """What only the values show: inf/NaN, negative BN variances, and L2 norms that are not the kernels' own."""
    import torch

    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise InvalidFileError(f"{bundle.source}: invalid bundle: tensor {name!r} holds inf or NaN values")
    for r in bundle.layers:
        if r.has_bn and bool((tensors[r.bn_name("running_var")] < 0).any()):
            raise InvalidFileError(f"{bundle.source}: invalid bundle: {r.bn_name('running_var')} has negative variances")
        norms = tensors[r.weight_name].double().flatten(1).norm(dim=1)
        if not torch.allclose(norms, torch.tensor(r.l2_norms, dtype=torch.float64), rtol=1e-4, atol=1e-6):
            raise InvalidFileError(f"{bundle.source}: corrupted bundle: layer {r.id}'s recorded l2_norms are not its "
                                   "kernels' norms; download or export it again")


def read_bundle(path: str | Path) -> Bundle:
    """Read, validate and hash-check a bundle, loading its tensors (from the very bytes that were checked)."""
    read_bundle_header(path, verify=False)  # refuses what is not a bundle before the file is read whole
    with open_input(path) as f, reading(path):
        data = f.read()
    header = parse_header(data[8 : 8 + header_length(data[:8], len(data), str(path))], len(data), str(path))
    bundle = bundle_from_header(header)
    verify_hash(bundle, io.BytesIO(data))
    tensors = _tensors_from_bytes(data, header)
    _check_values(bundle, tensors)
    return dataclasses.replace(bundle, tensors=tensors)


def _tensor_hash_of(tensors: Mapping[str, Any]) -> str:
    """The tensor hash of in-memory tensors: what `tensor_hash` computes from the written file."""
    from learngene_tools.io.tensors import TORCH_TO_ST, tensor_bytes

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        hash_entry_prefix(h, name, TORCH_TO_ST[t.dtype], tuple(t.shape))
        h.update(tensor_bytes(t))
    return "sha256:" + h.hexdigest()


def encode_bundle(layers: list[LayerRecord], tensors: Mapping[str, Any], provenance: Mapping[str, Any]) -> bytes:
    """Serialise a bundle (schema 2) to bytes, deterministically; the tensor and metadata hashes are added."""
    import torch

    from learngene_tools.io.tensors import encode_safetensors

    for name, t in tensors.items():
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise InvalidFileError(f"learngene tensor {name!r} is not finite floating point ({t.dtype}); the "
                                   "auxiliary model is damaged (did its distillation diverge?)")
    # hash what a reader will parse: records and provenance after a JSON round trip (tuples become lists, ...)
    prov = json.loads(json.dumps({**provenance, "tensor_hash": _tensor_hash_of(tensors)}, sort_keys=True))
    try:
        records = [LayerRecord.from_json(json.loads(json.dumps(r.to_json()))) for r in layers]
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidFileError(f"cannot write a bundle of this auxiliary model: a layer record is out of range ({e})") from None
    meta = {
        SCHEMA_KEY: SCHEMA_VERSION,
        LAYERS_KEY: json.dumps([r.to_json() for r in records], sort_keys=True),
        PROVENANCE_KEY: json.dumps(prov, sort_keys=True),
        HASH_KEY: metadata_hash(records, prov),
    }
    data = encode_safetensors(tensors, meta)
    n = int.from_bytes(data[:8], "little")
    bundle = bundle_from_header(parse_header(data[8 : 8 + n], len(data), "<bundle>"))
    verify_hash(bundle, io.BytesIO(data))
    return data


def write_bundle(path: str | Path, layers: list[LayerRecord], tensors: Mapping[str, Any], provenance: Mapping[str, Any]) -> None:
    """Write a bundle atomically (temporary file, then rename)."""
    from learngene_tools.io.files import atomic_path

    data = encode_bundle(layers, tensors, provenance)
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(data)


def upgrade_bundle(src: str | Path, out: str | Path) -> Bundle:
    """Re-export a schema-1 bundle as schema 2 with byte-identical tensors (norms are checked against them first)."""
    old = read_bundle(src)
    provenance = {k: v for k, v in old.provenance.items() if k != "tensor_hash"}
    write_bundle(out, list(old.layers), old.tensors, provenance)
    new = read_bundle_header(out)
    assert new.provenance["tensor_hash"] == old.provenance["tensor_hash"]
    return new


def _stats(xs: tuple[float, ...]) -> dict[str, float | None]:
    if not xs:
        return {"min": None, "mean": None, "max": None}
    return {"min": min(xs), "mean": sum(xs) / len(xs), "max": max(xs)}


def bundle_summary(bundle: Bundle, verified: bool) -> dict[str, Any]:
    """JSON-ready description of a bundle (header data only)."""
    return {
        "kind": "learngene bundle",
        "file": bundle.source,
        "size_bytes": bundle.header.file_size if bundle.header else None,
        "schema": bundle.schema,
        "tensor_hash": bundle.provenance.get("tensor_hash"),
        "hash_verified": verified,
        "metadata_hash": bundle.metadata_hash,
        "metadata_protected": bundle.metadata_protected,
        "warnings": [] if bundle.metadata_protected else [UNPROTECTED_WARNING],
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
