"""From OpenPose keypoints to the skeleton model's input: the BODY_25 graph, bones, normalisation
and sampling a clip to a fixed number of frames.

The graph is OpenPose's BODY_25 tree rooted at the neck. A bone is a joint minus its parent (the
neck's bone is zero), as in 2s-AGCN, with the joint's confidence. Normalisation is per clip and
only uses confident points (OpenPose writes (0, 0, 0) for a missed point): origin at the mean neck,
unit the mean shoulder width (else neck to mid-hip, else the frame height), so players filmed at
different distances look alike; missed points stay at 0 with confidence 0.
"""

from __future__ import annotations

import numpy as np

# (child, parent) of BODY_25, root the neck (1).
BODY_25_PARENTS: tuple[int, ...] = (
    1, 1, 1, 2, 3, 1, 5, 6, 1, 8, 9, 10, 8, 12, 13, 0, 0, 15, 16, 14, 19, 14, 11, 22, 11,
)  # fmt: skip
NUM_JOINTS = 25
NECK, R_SHOULDER, L_SHOULDER, MID_HIP = 1, 2, 5, 8
EDGES: tuple[tuple[int, int], ...] = tuple(
    (j, p) for j, p in enumerate(BODY_25_PARENTS) if j != p)


def adjacency_subsets(num_joints: int = NUM_JOINTS,
                      edges: tuple[tuple[int, int], ...] = EDGES) -> np.ndarray:
    """ST-GCN's spatial partition as 2s-AGCN uses it: (3, V, V) = identity, inward (child to
    parent, toward the neck) and outward, for `x @ A` over joints (A[v, w] weighs sender v into
    receiver w), each column-normalised (A D^-1: a receiver averages its senders)."""
    eye = np.eye(num_joints)
    inward = np.zeros((num_joints, num_joints))
    for child, parent in edges:
        inward[child, parent] = 1.0

    def norm(a: np.ndarray) -> np.ndarray:
        deg = a.sum(0)
        return a / np.where(deg > 0, deg, 1.0)[None, :]

    return np.stack([eye, norm(inward), norm(inward.T)]).astype(np.float32)


def normalise(kp: np.ndarray, min_conf: float = 0.05) -> np.ndarray:
    """(T, V, 3) pixels + confidence -> (T, V, 3) body-relative x, y + confidence (float32)."""
    kp = np.asarray(kp, np.float32)
    seen = kp[..., 2] > min_conf  # (T, V)

    def mean_point(j: int) -> np.ndarray | None:
        return kp[seen[:, j], j, :2].mean(0) if seen[:, j].any() else None

    def mean_dist(a: int, b: int) -> float | None:
        both = seen[:, a] & seen[:, b]
        if not both.any():
            return None
        return float(np.linalg.norm(kp[both, a, :2] - kp[both, b, :2], axis=-1).mean())

    origin = mean_point(NECK)
    if origin is None:
        origin = kp[seen][:, :2].mean(0) if seen.any() else np.zeros(2, np.float32)
    unit = mean_dist(R_SHOULDER, L_SHOULDER) or mean_dist(NECK, MID_HIP)
    if not unit:
        unit = max(float(np.ptp(kp[seen][:, 1])) if seen.any() else 1.0, 1.0)
    out = np.zeros_like(kp)
    out[..., :2] = np.where(seen[..., None], (kp[..., :2] - origin) / unit, 0.0)
    out[..., 2] = np.where(seen, kp[..., 2], 0.0)
    return out


def bones(joints: np.ndarray) -> np.ndarray:
    """(..., V, 3) joints -> (..., V, 3) bones: x, y minus the parent's, confidence the lower of
    the two (a bone to a missed point is missed)."""
    parents = np.asarray(BODY_25_PARENTS)
    out = joints.copy()
    out[..., :2] = joints[..., :2] - joints[..., parents, :2]
    out[..., 2] = np.minimum(joints[..., 2], joints[..., parents, 2])
    out[..., :2] *= (out[..., 2:] > 0)
    return out


def sample_frames(length: int, frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices of `frames` frames out of a clip of `length`: PYSKL's uniform sampling, one frame
    from each of `frames` equal bins (at random in training, the bin centre when rng is None);
    a clip shorter than `frames` repeats frames in order."""
    if length < 1 or frames < 1:
        raise ValueError(f"need length >= 1 and frames >= 1, got {length}, {frames}")
    edges = np.linspace(0, length, frames + 1)
    if rng is None:
        pos = (edges[:-1] + edges[1:]) / 2
    else:
        pos = edges[:-1] + rng.random(frames) * (edges[1:] - edges[:-1])
    return np.clip(np.floor(pos).astype(np.int64), 0, length - 1)


def clip_input(kp: np.ndarray, frames: int, stream: str,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """One clip's keypoints (T, >=25, 3) -> the model input (3, frames, 25) of `stream`
    ("joint" or "bone")."""
    if stream not in ("joint", "bone"):
        raise ValueError(f"stream must be 'joint' or 'bone', got {stream!r}")
    body = normalise(kp[:, :NUM_JOINTS])
    x = body[sample_frames(len(body), frames, rng)]
    if stream == "bone":
        x = bones(x)
    return np.ascontiguousarray(x.transpose(2, 0, 1))
