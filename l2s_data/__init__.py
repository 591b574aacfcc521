"""l2s-data: the data platform under Learn-to-Steer (input-dependent steering of MLLMs)."""

__version__ = "0.1.0"
