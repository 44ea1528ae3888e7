"""Stage-two detector: Mamba mixer, deformable 1-D sampling, decoder layer, detector."""

from detect.model.decoder import (
    DecoderLayer,
    DynamicMixing,
    QueryMixer,
    num_boundary_points,
    points_to_segments,
)
from detect.model.detector import (
    DenseHead,
    Detector,
    count_parameters,
    init_query_points,
    parameter_groups,
)
from detect.model.mamba import (
    Mamba,
    MambaBackendError,
    check_cuda_parity,
    cuda_backend_available,
    selective_scan_torch,
)
from detect.model.sampling import PointSampler, sample_features

__all__ = [
    "DecoderLayer",
    "DenseHead",
    "Detector",
    "DynamicMixing",
    "Mamba",
    "MambaBackendError",
    "PointSampler",
    "QueryMixer",
    "check_cuda_parity",
    "count_parameters",
    "cuda_backend_available",
    "init_query_points",
    "num_boundary_points",
    "parameter_groups",
    "points_to_segments",
    "sample_features",
    "selective_scan_torch",
]
