"""Checks: each takes measured results and returns a verdict with its evidence; none starts servers."""
