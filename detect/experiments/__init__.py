"""Experiments over one feature cache: per-step baselines and config ablations."""
