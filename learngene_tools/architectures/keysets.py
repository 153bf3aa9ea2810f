"""State-dict key sets: fingerprints for identification, and a model's keys aligned with a checkpoint's.

A checkpoint's keys may differ from the in-memory model's by a prefix (a Lightning module's
`model.`, a wrapper's `model.backbone.`) or by a rename the library applies when saving
(transformers 5 saves a timm backbone's `backbone.model.*` as `backbone.conv_encoder.model.*`,
attention's `o_proj` as `out_proj`, …). `saved_names` asks the library for its save-time names;
`align_keys` finds the mapping or says which keys do not match.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from learngene_tools.errors import ModelError

Shapes = Mapping[str, tuple[int, ...]]

# saved name -> in-memory name, applied to checkpoint keys (substring rename)
SAVE_RENAMES = (("backbone.conv_encoder.model.", "backbone.model."),)

HEAD_PARTS = frozenset({
    "head", "heads", "fc", "classifier", "aux_classifier", "pre_logits", "logits", "class_embed", "bbox_embed",
    "last_linear", "head_dist", "segmentation_head", "class_labels_classifier", "bbox_predictor",
})


def fingerprint(shapes: Iterable[tuple[str, tuple[int, ...]]]) -> str:
    """A short hash of a set of (key, shape) pairs, independent of their order."""
    lines = sorted(f"{k}:{','.join(map(str, s))}" for k, s in shapes)
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:20]


def is_head_key(key: str, heads: Iterable[str] = ()) -> bool:
    """True for a classifier/head tensor: under a module named like a head, or under one of `heads` (module paths)."""
    if any(key == h or key.startswith(h + ".") for h in heads):
        return True
    return any(p in HEAD_PARTS for p in key.split(".")[:-1])


@dataclass(frozen=True)
class KeyMap:
    """Model key -> checkpoint key, for every model key the checkpoint holds; how they were matched."""

    to_ckpt: dict[str, str]
    how: str  # "" when identical, else e.g. "prefix 'model.'" or "saved names (backbone.conv_encoder.model.*)"

    def ckpt(self, model_key: str | None) -> str | None:
        """The checkpoint key of a model key (None when the checkpoint lacks it)."""
        return None if model_key is None else self.to_ckpt.get(model_key)

    def through(self, names: Mapping[str, str]) -> KeyMap:
        """This map (over saved names) seen from in-memory keys: `names` maps in-memory key -> saved name."""
        if all(k == v for k, v in names.items()):
            return self
        to = {live: self.to_ckpt[saved] for live, saved in names.items() if saved in self.to_ckpt}
        return KeyMap(to, "; ".join(p for p in (self.how, "the library's saved names") if p))


def saved_names(model: Any) -> dict[str, str]:
    """In-memory key -> the key the model's library writes when saving (transformers' save-time conversions)."""
    state = model.state_dict()
    if not any(c.__name__ == "PreTrainedModel" for c in type(model).__mro__):
        return {k: k for k in state}
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers before 5 saves the in-memory names
        return {k: k for k in state}
    reverted = revert_weight_conversion(model, dict(state))
    by_tensor = {id(v): k for k, v in reverted.items()}
    return {k: by_tensor.get(id(v), k) for k, v in state.items()}


def saved_shapes(model: Any) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """The model's state_dict shapes under its saved names, and in-memory key -> saved name."""
    names = saved_names(model)
    state = model.state_dict()
    return {names[k]: tuple(v.shape) for k, v in state.items()}, names


def _renamed(key: str) -> str:
    for saved, live in SAVE_RENAMES:
        if saved in key:
            key = key.replace(saved, live)
    return key


def _candidate_prefixes(model: Shapes, ckpt: Shapes) -> list[str]:
    """Prefixes p with p + (a model key) in the checkpoint, longest shared first ('' always tried first)."""
    probe = next((k for k, s in model.items() if len(s) == 4), next(iter(model), None))
    found = [""]
    if probe is not None:
        for k in ckpt:
            if k.endswith("." + probe):
                p = k[: -len(probe)]
                if p not in found:
                    found.append(p)
    return found


def _try(model: Shapes, ckpt: Shapes, names: dict[str, str], prefix: str, heads: Iterable[str]) -> tuple[dict[str, str], list[str], list[str], list[str]]:
    """Map model keys through `prefix` onto the checkpoint (whose keys are `names`: live name -> ckpt key)."""
    heads = tuple(heads)
    mapping: dict[str, str] = {}
    missing, wrong = [], []
    for k, shape in model.items():
        ck = names.get(prefix + k)
        if ck is None:
            if not is_head_key(k, heads):
                missing.append(k)
            continue
        if tuple(ckpt[ck]) != tuple(shape) and not is_head_key(k, heads):
            wrong.append(k)
            continue
        mapping[k] = ck
    covered = set(mapping.values())
    extra = [ck for live, ck in names.items() if live.startswith(prefix) and ck not in covered
             and not is_head_key(live[len(prefix):], heads)]
    return mapping, missing, wrong, extra


def align_model(model: Any, ckpt: Shapes, heads: Iterable[str] = (), what: str = "the --arch model") -> KeyMap:
    """`align_keys` for a built model, through its library's saved names; the map is from in-memory keys."""
    shapes, names = saved_shapes(model)
    heads = tuple(heads) + tuple(names[h] for h in heads if h in names)
    return align_keys(shapes, ckpt, heads, what).through(names)


def align_keys(model: Shapes, ckpt: Shapes, heads: Iterable[str] = (), what: str = "the --arch model") -> KeyMap:
    """Map the model's keys onto the checkpoint's, or raise ModelError listing unmatched keys of each side.

    Head tensors (classifier, detection/segmentation heads) may be absent or differ in shape (another class count).
    """
    heads = tuple(heads)
    best = None
    for renamed in (False, True):
        names = {(_renamed(k) if renamed else k): k for k in ckpt}
        if renamed and all(v == k for k, v in names.items()):
            continue
        for prefix in _candidate_prefixes(model, dict.fromkeys(names, ())):
            mapping, missing, wrong, extra = _try(model, ckpt, names, prefix, heads)
            if not (missing or wrong or extra) and mapping:
                parts = ([f"prefix {prefix!r}"] if prefix else []) + (["saved names (" + ", ".join(
                    f"{s}* for {live}*" for s, live in SAVE_RENAMES) + ")"] if renamed else [])
                return KeyMap(mapping, "; ".join(parts))
            score = len(missing) + len(wrong) + len(extra)
            if best is None or score < best[0]:
                best = (score, prefix, missing, wrong, extra, names)
    assert best is not None
    _, prefix, missing, wrong, extra, names = best
    parts = []
    if missing:
        parts.append(f"{len(missing)} of its keys are not in the checkpoint (e.g. {', '.join(missing[:3])})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} differ in shape (e.g. {k}: model {list(model[k])}, "
                     f"checkpoint {list(ckpt[names[prefix + k]])})")
    if extra:
        parts.append(f"{len(extra)} checkpoint keys are not in the model (e.g. {', '.join(extra[:3])})")
    where = f" under prefix {prefix!r}" if prefix else ""
    raise ModelError(f"{what} does not match the checkpoint{where}: {'; '.join(parts)}; is it the right model?")
