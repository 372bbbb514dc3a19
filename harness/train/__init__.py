"""archobj harness: One training stage: config, optimiser, steps, loop, data, checkpoints, the run record."""
