"""archobj experiments."""
