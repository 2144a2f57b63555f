"""Pure scoring and preference math used by the reward callbacks."""
