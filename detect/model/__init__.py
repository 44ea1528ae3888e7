"""The networks: Mamba mixer, deformable 1-D point sampling, decoder layer, detector, the
end-to-end I3D + detector, segment geometry, and `build` (where a config becomes a model)."""
