"""sppo-pl: Self-Play Preference Optimization (arXiv 2405.00675) with PyTorch Lightning, vLLM and Hydra."""

__version__ = "0.1.0"
