"""In-memory transplant targets: a live `nn.Module`, or a state_dict (any mapping of names to tensors).

A module is traced as it is (its own forward pass gives the strides: nothing to identify) and
initialised in place, each tensor keeping its device and dtype. A state_dict is planned like a
checkpoint file of the same tensors (its architecture given with `arch=`, or identified from its
keys), and applying the plan returns a new mapping of the same form; the input is not modified.
The plan and the tensors are those the file route gives for the same weights and seed.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from learngene_tools.errors import ModelError, SettingsError
from learngene_tools.io.checkpoint import Checkpoint, WeightCopy
from learngene_tools.io.reading import common_prefix, find_weight_copies

MODULE_SOURCE = "<{} module>"
STATE_SOURCE = "<state_dict>"


def is_in_memory(target: object) -> bool:
    """True for an nn.Module or a mapping (a state_dict) given as a transplant target."""
    return isinstance(target, (nn.Module, Mapping))


def module_checkpoint(model: nn.Module) -> Checkpoint:
    """The live module's tensors as a checkpoint (no copy: its state_dict's tensors share the module's storage)."""
    state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ModelError(f"the target {type(model).__name__} has no parameters or buffers")
    return Checkpoint(source=MODULE_SOURCE.format(type(model).__name__), fmt="model", _state=state,
                      shapes={k: tuple(v.shape) for k, v in state.items()}, dtypes={k: v.dtype for k, v in state.items()})


def state_dict_checkpoint(state: Mapping[Any, Any]) -> Checkpoint:
    """A state_dict as a checkpoint, read as a pickled one would be: under a wrapper key (`state_dict`, `model`,
    `ema`, ...) or bare, every copy of the weights, `module.`/`_orig_mod.` prefixes stripped."""
    found = find_weight_copies(state)
    if not found:
        keys = ", ".join(map(repr, list(state)[:5]))
        raise SettingsError(f"target: a mapping with no tensors under string keys (keys {keys or 'none'}); give a "
                            "state_dict, an nn.Module, a checkpoint path or a model spec")
    copies = []
    for wrapper, x in found:
        if isinstance(x, nn.Module):
            raise SettingsError(f"target: the mapping holds a whole {type(x).__name__} under "
                                f"{''.join(f'[{k!r}]' for k in wrapper)}; pass that module itself")
        prefix = common_prefix([k for k, v in x.items() if isinstance(v, torch.Tensor)])
        copies.append(WeightCopy(wrapper, prefix, x))
    first = copies[0]
    return Checkpoint(source=STATE_SOURCE, fmt="model", prefix=first.prefix, wrapper=first.path, _container=state,
                      _state=first.state, copies=copies, shapes=first.shapes(),
                      dtypes={k: first.get(k).dtype for k in first.shapes()})


def on_cpu(read: Any) -> Any:
    """A tensor reader that hands the adaptation cpu tensors (a CUDA model's BN values, its conv's std)."""
    return lambda key: read(key).detach().cpu()


def apply_to_module(model: nn.Module, ckpt: Checkpoint, updates: Mapping[str, torch.Tensor]) -> None:
    """Copy `updates` into the module's own tensors, in place: each keeps its device, dtype and identity (an
    optimizer built on the module still holds its parameters)."""
    live = model.state_dict(keep_vars=True)
    for key, t in updates.items():
        if key not in live or tuple(live[key].shape) != ckpt.shapes[key]:
            raise ModelError(f"{ckpt.source}: {key} changed since the plan was made; plan again")
    with torch.no_grad():
        for key, t in updates.items():
            live[key].copy_(t)


def updated_state(ckpt: Checkpoint, per_copy: Sequence[Mapping[str, torch.Tensor]]) -> Any:
    """The state_dict target with each copy's updates, as a new mapping of the same form (the input untouched).

    Updated tensors take the original's device and dtype; every other entry is the input's own object."""
    result: Any = ckpt.container
    for c, updates in zip(ckpt.copies, per_copy):
        new = copy.copy(c.state) if isinstance(c.state, dict) else dict(c.state)
        for key, t in updates.items():
            old = c.state[c.prefix + key]
            new[c.prefix + key] = t.to(device=old.device, dtype=old.dtype)
        result = _put(result, c.path, new)
    return result


def _put(obj: Any, path: tuple[str, ...], value: Any) -> Any:
    if not path:
        return value
    new = copy.copy(obj) if isinstance(obj, dict) else dict(obj)
    new[path[0]] = _put(obj[path[0]], path[1:], value)
    return new
