"""archobj objectives."""
