"""Classical baselines: spectral indices and scene-wide thresholds, streamed over chunks."""
