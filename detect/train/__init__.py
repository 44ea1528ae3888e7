"""Training: the loop (setup, one epoch, validate and checkpoint), Hungarian matching, set losses,
weight EMA."""
