"""Training: the 2s-AGCN skeleton streams and the fusion heads on cached tokens."""
