"""The common joint layout every pose source is mapped to, and the mapping tables.

Three sources, three skeletons: Kinect v2 (25 joints, SMG), OpenPose BODY_25 with face and hands
(137 points, iMiGUE; `extract.pose.openpose`) and BlazePose (33 landmarks, mediapipe). Their
joints are named and placed differently, so each is mapped to the 17 joints all three have, in
2D image coordinates (pixels):

    common           Kinect v2 (25)        OpenPose (137 points)            BlazePose (33)
    0  head          3 Head                0 nose                           0 nose
    1  neck          20 SpineShoulder      1 neck                           mean(11, 12)
    2  right_shoulder 8 ShoulderR          2                                12
    3  right_elbow   9 ElbowR              3                                14
    4  right_wrist   10 WristR             4                                16
    5  right_hand    11 HandR              mean(121, 125, 129, 133), else   mean(18, 20)
                                           mean(124, 128, 132, 136)
    6  left_shoulder 4 ShoulderL           5                                11
    7  left_elbow    5 ElbowL              6                                13
    8  left_wrist    6 WristL              7                                15
    9  left_hand     7 HandL               mean(100, 104, 108, 112), else   mean(17, 19)
                                           mean(103, 107, 111, 115)
    10 mid_hip       0 SpineBase           8 mid_hip                        mean(23, 24)
    11 right_hip     16 HipR               9                                24
    12 right_knee    17 KneeR              10                               26
    13 right_ankle   18 AnkleR             11                               28
    14 left_hip      12 HipL               12                               23
    15 left_knee     13 KneeL              13                               25
    16 left_ankle    14 AnkleL             14                               27

Left and right are the person's own in all three. Choices:
- head: Kinect has no nose; its Head joint (centre of the head) is the nearest point, a few
  centimetres above the nose in the image.
- neck: OpenPose's neck sits between the shoulders, as Kinect v2's SpineShoulder does (its
  `Neck` joint is higher, under the chin); BlazePose has no neck, so it is the shoulders' midpoint.
- hand = the palm: Kinect's Hand joint; BlazePose's mean of the index and pinky knuckles (17-20);
  OpenPose's mean of the four finger knuckles (hand points 5, 9, 13, 17), else, for the MiGA
  `_light_hand.csv` tables that keep only fingertips, the mean of the four fingertips (8, 12, 16,
  20; the palm would be about half a hand nearer the wrist).
- feet, eyes, ears, fingers beyond the palm are left out: not every source has them.

A common joint made of several points (`mean(...)`) exists in a frame only when all of its points
do (a midpoint of one shoulder would be that shoulder); its confidence is then their lowest.
Alternatives are tried in order, per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from extract.pose.openpose import BODY_25, LEFT_HAND, NUM_KEYPOINTS, RIGHT_HAND

COMMON_JOINTS: tuple[str, ...] = (
    "head", "neck", "right_shoulder", "right_elbow", "right_wrist", "right_hand",
    "left_shoulder", "left_elbow", "left_wrist", "left_hand", "mid_hip", "right_hip",
    "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
)  # fmt: skip
COMMON_NAME = f"common-{len(COMMON_JOINTS)}"

# The order SMG's CSV holds them in (the Kinect SDK's JointType numbering).
KINECT_V2: tuple[str, ...] = (
    "SpineBase", "SpineMid", "Neck", "Head", "ShoulderL", "ElbowL", "WristL", "HandL",
    "ShoulderR", "ElbowR", "WristR", "HandR", "HipL", "KneeL", "AnkleL", "FootL", "HipR",
    "KneeR", "AnkleR", "FootR", "SpineShoulder", "HandTipL", "ThumbL", "HandTipR", "ThumbR",
)  # fmt: skip

BLAZEPOSE_33: tuple[str, ...] = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index",
)  # fmt: skip

# One common joint: alternatives tried in order, each a group of source points averaged.
JointSource = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Layout:
    """A source skeleton: its model name (stored in feature sets), point names and how each
    common joint is made from its points."""

    model: str
    points: tuple[str, ...]
    table: dict[str, JointSource]

    @property
    def num_points(self) -> int:
        return len(self.points)


def _k(*names: str) -> JointSource:
    return (tuple(KINECT_V2.index(n) for n in names),)


def _b(*names: str) -> JointSource:
    return (tuple(BLAZEPOSE_33.index(n) for n in names),)


def _op(name: str) -> JointSource:
    return ((BODY_25.index(name),),)


def _op_hand(hand: slice) -> JointSource:
    knuckles = tuple(hand.start + i for i in (5, 9, 13, 17))
    tips = tuple(hand.start + i for i in (8, 12, 16, 20))
    return (knuckles, tips)


KINECT = Layout("kinect-v2-25", KINECT_V2, {
    "head": _k("Head"), "neck": _k("SpineShoulder"),
    "right_shoulder": _k("ShoulderR"), "right_elbow": _k("ElbowR"), "right_wrist": _k("WristR"),
    "right_hand": _k("HandR"),
    "left_shoulder": _k("ShoulderL"), "left_elbow": _k("ElbowL"), "left_wrist": _k("WristL"),
    "left_hand": _k("HandL"),
    "mid_hip": _k("SpineBase"), "right_hip": _k("HipR"), "right_knee": _k("KneeR"),
    "right_ankle": _k("AnkleR"), "left_hip": _k("HipL"), "left_knee": _k("KneeL"),
    "left_ankle": _k("AnkleL"),
})  # fmt: skip

OPENPOSE = Layout("openpose-body25", BODY_25 + tuple(
    f"point{i}" for i in range(len(BODY_25), NUM_KEYPOINTS)), {
    "head": _op("nose"), "neck": _op("neck"),
    "right_shoulder": _op("right_shoulder"), "right_elbow": _op("right_elbow"),
    "right_wrist": _op("right_wrist"), "right_hand": _op_hand(RIGHT_HAND),
    "left_shoulder": _op("left_shoulder"), "left_elbow": _op("left_elbow"),
    "left_wrist": _op("left_wrist"), "left_hand": _op_hand(LEFT_HAND),
    "mid_hip": _op("mid_hip"), "right_hip": _op("right_hip"), "right_knee": _op("right_knee"),
    "right_ankle": _op("right_ankle"), "left_hip": _op("left_hip"), "left_knee": _op("left_knee"),
    "left_ankle": _op("left_ankle"),
})  # fmt: skip

BLAZEPOSE = Layout("blazepose-33-full", BLAZEPOSE_33, {
    "head": _b("nose"), "neck": _b("left_shoulder", "right_shoulder"),
    "right_shoulder": _b("right_shoulder"), "right_elbow": _b("right_elbow"),
    "right_wrist": _b("right_wrist"), "right_hand": _b("right_pinky", "right_index"),
    "left_shoulder": _b("left_shoulder"), "left_elbow": _b("left_elbow"),
    "left_wrist": _b("left_wrist"), "left_hand": _b("left_pinky", "left_index"),
    "mid_hip": _b("left_hip", "right_hip"), "right_hip": _b("right_hip"),
    "right_knee": _b("right_knee"), "right_ankle": _b("right_ankle"), "left_hip": _b("left_hip"),
    "left_knee": _b("left_knee"), "left_ankle": _b("left_ankle"),
})  # fmt: skip

LAYOUTS: dict[str, Layout] = {lay.model: lay for lay in (KINECT, OPENPOSE, BLAZEPOSE)}


def to_common(points: np.ndarray, layout: Layout) -> np.ndarray:
    """(N, K, 3) source points (x, y pixels, confidence; confidence 0 = missing) ->
    (N, J, 3) common joints in `COMMON_JOINTS` order, missing ones all zero."""
    points = np.asarray(points, np.float32)
    if points.ndim != 3 or points.shape[1:] != (layout.num_points, 3):
        raise ValueError(f"{layout.model}: points must be (N, {layout.num_points}, 3), got "
                         f"{points.shape}")
    out = np.zeros((points.shape[0], len(COMMON_JOINTS), 3), np.float32)
    for j, name in enumerate(COMMON_JOINTS):
        todo = np.ones(points.shape[0], bool)
        for group in layout.table[name]:
            sel = points[:, list(group)]  # (N, g, 3)
            ok = todo & (sel[:, :, 2] > 0).all(axis=1)
            out[ok, j, :2] = sel[ok, :, :2].mean(axis=1)
            out[ok, j, 2] = sel[ok, :, 2].min(axis=1)
            todo &= ~ok
    return out
