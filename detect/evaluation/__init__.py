"""Scoring detections against annotations: MiGA F1, strict F1, mAP; a run's evaluation; MiGA
submission files."""
