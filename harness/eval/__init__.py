"""archobj harness: Zero-shot evaluation: tokenizer, scoring core, the lm-eval model, EAI-Eval and T0-Eval."""
