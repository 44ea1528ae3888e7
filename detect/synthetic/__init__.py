"""Fixtures only: synthetic feature sets, SMG timeline statistics, rendered videos. Nothing on the
core path (data through train) imports this package."""
