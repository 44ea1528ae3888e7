"""Labelled data for stage two: annotations, windows over cached features or frames, augmentation,
and converters from the datasets' own layouts (converters/)."""
