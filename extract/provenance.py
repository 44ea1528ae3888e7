"""Versions and environment, written next to every output so a result can be traced."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("mgdet", "torch", "torchvision", "pytorchvideo", "av", "h5py", "numpy", "scipy")


def mgdet_version() -> str:
    try:
        return metadata.version("mgdet")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, Any]:
    """Python, platform, package versions and the git commit of this checkout."""
    pkgs: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": pkgs,
        "git_commit": git_commit(),
    }
    try:
        import torch

        info["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info
