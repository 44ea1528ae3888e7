"""From model outputs to detections: the Detections type and its file, decoding and NMS, the
offline predictor over windows, and the online (streaming) detector."""
