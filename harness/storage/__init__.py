"""archobj harness: Models on disk: the checkpoint format, damaged-checkpoint reporting, Hugging Face conversion."""
