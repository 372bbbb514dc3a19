"""archobj harness."""
