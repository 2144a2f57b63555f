"""Utilities: model fetching, FSDP helpers and weight streaming to the rollout engine."""
