"""Synthetic data built on real anatomy (phantoms), clearly labelled as synthetic."""
