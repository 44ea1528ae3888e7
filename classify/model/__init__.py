"""Clip classifiers: 2s-AGCN on skeletons (`agcn.py`)."""
