"""archobj harness: Benchmarks that print figures (PERF.md protocol): the training step and evaluation."""
