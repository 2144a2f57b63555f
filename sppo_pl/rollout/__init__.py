"""Rollout engines: generate K responses per prompt and take the policy's weights in place."""

from sppo_pl.rollout.base import Generation, RolloutEngine, SamplingConfig

__all__ = ["Generation", "RolloutEngine", "SamplingConfig"]
