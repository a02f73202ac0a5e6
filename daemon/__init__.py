"""The daemon: settings, the CLI, the vLLM supervisor, the gateway and the learning loop.

The wiring layer: it imports the libraries (`feedback_store`, `adapters`, `evals`, `base_model`);
they never import it.
"""
