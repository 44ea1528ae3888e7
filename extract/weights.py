"""Checked weight loading for every backbone: read a checkpoint file without running its code,
find the state_dict in it, check it key by key against the network, and name the weights by a
digest that goes into every feature set's key.

Nothing here falls back to random weights: a missing, unreadable or unfitting file is a
WeightsError naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class WeightsError(ValueError):
    """A checkpoint is missing, unreadable or does not fit the backbone."""


@dataclass
class Weights:
    """Which weights a backbone holds. label: "kinetics", "random" or the checkpoint path."""

    label: str
    sha256: str
    seed: int | None = None


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over sorted keys, dtypes, shapes and tensor bytes (stable across runs)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_torch_file(path: Path) -> Any:
    """The object in a torch checkpoint file, read with `weights_only` (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint file does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many kinds (pickle, zip, EOF, ...) for junk
        raise WeightsError(
            f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})"
        ) from e


def state_dict_in(obj: Any, path: Path, containers: tuple[str, ...] = (),
                  strip: tuple[str, ...] = ("module.",), expected: str = "a dict of tensors"
                  ) -> dict[str, torch.Tensor]:
    """The state_dict in a loaded checkpoint: `obj` itself or its first entry among
    `containers` that is a dict; each key loses the `strip` prefixes (in order)."""
    for key in containers:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state_dict (expected {expected})")
    out = {}
    for k, v in obj.items():
        for prefix in strip:
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def _listed(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def check_state(state: dict[str, torch.Tensor], wanted: dict[str, torch.Tensor], path: Path,
                what: str, optional: Callable[[str], bool] = lambda k: False,
                ) -> dict[str, torch.Tensor]:
    """The entries of `state` that `wanted` (the network's own state_dict, or the part of it to
    load) names, after checking that none is missing (unless `optional`), none has another shape
    and `state` has no other key; else WeightsError "{path}: {what}: ..." listing them."""
    missing = [k for k in wanted if k not in state and not optional(k)]
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in wanted.items()
           if k in state and state[k].shape != v.shape]
    unexpected = [k for k in state if k not in wanted]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_listed(missing)})")
    if bad:
        parts.append(f"{len(bad)} mismatched shapes ({'; '.join(bad[:5])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_listed(unexpected)})")
    if parts:
        raise WeightsError(f"{path}: {what}: " + "; ".join(parts))
    return {k: state[k] for k in wanted if k in state}


# In an end-to-end mgdet checkpoint the I3D's state sits under this prefix of "model".
MGDET_BACKBONE_PREFIX = "backbone."


def read_checkpoint(path: Path, containers: tuple[str, ...] = ("model_state",)
                    ) -> tuple[dict[str, torch.Tensor], bool]:
    """(backbone-or-whole state_dict, is_mgdet) of a checkpoint file.

    Accepts a dict holding the state_dict under one of `containers` (a `.pyth` has it under
    `model_state`), a plain state_dict, or an mgdet training checkpoint of an end-to-end run
    (`runs/NAME/checkpoints/best.pt`: its "model" holds the backbone under "backbone."). A
    feature-mode mgdet checkpoint holds no backbone: an error.
    """
    obj = load_torch_file(path)
    mgdet = isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "config" in obj
    if mgdet:
        mode = obj["config"].get("mode", "features") if isinstance(obj["config"], dict) else None
        obj = {k.removeprefix(MGDET_BACKBONE_PREFIX): v for k, v in obj["model"].items()
               if k.startswith(MGDET_BACKBONE_PREFIX)}
        if not obj:
            raise WeightsError(
                f"{path}: an mgdet checkpoint of a {mode!r}-mode run holds no I3D backbone; "
                "only end-to-end runs (mode = \"e2e\") finetune it"
            )
    held = " or ".join(repr(c) for c in containers)
    state = state_dict_in(obj, path, containers=containers,
                          expected=f"a dict of tensors, a dict with {held}, or an "
                          "end-to-end mgdet checkpoint")
    return state, mgdet
