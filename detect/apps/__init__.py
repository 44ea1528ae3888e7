"""What users run on top of a trained run: predict, stream, report (and its plots), the demo,
and the dataset-conversion commands."""
