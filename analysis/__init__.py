"""archobj analysis."""
