"""Inference: OpenAI chat and text completions, passed through to vLLM and logged."""
