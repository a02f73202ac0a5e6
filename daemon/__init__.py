"""The daemon: settings, the CLI, and (with the serving issue) the supervisor and gateway.

The wiring layer: it imports the libraries (`feedback_store`, `adapters`, `evals`, `base_model`);
they never import it.
"""
