"""Dataset layouts (SMG, iMiGUE, ActivityNet-style JSON) converted to canonical annotations."""

from detect.datasets.activitynet import convert_activitynet
from detect.datasets.common import (
    DatasetError,
    frames_to_seconds,
    seconds_to_frames,
    summarize,
)
from detect.datasets.imigue import IMIGUE_CLASSES, convert_imigue
from detect.datasets.smg import SMG_CLASSES, convert_smg, find_videos
from extract.pipeline import video_id_from_path

__all__ = [
    "IMIGUE_CLASSES",
    "SMG_CLASSES",
    "DatasetError",
    "convert_activitynet",
    "convert_imigue",
    "convert_smg",
    "find_videos",
    "frames_to_seconds",
    "seconds_to_frames",
    "summarize",
    "video_id_from_path",
]
