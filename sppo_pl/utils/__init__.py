"""Utilities: fetching the default model (``fetch_model``) and building tiny random models (``tiny_model``)."""
