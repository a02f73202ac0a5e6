"""The OpenAI-compatible FastAPI gateway: one router + protocol + service per resource."""
