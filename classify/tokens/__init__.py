"""Clip tokens cached in HDF5: the generic per-clip token cache and the MViTv2-S RGB tokens."""
