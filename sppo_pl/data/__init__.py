"""Prompt sources: each returns a ``datasets.DatasetDict`` with ``train`` and ``test`` splits."""
