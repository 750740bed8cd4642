"""alignflow: an LLM post-training pipeline on Prefect. See README.md."""

__version__ = "0.1.0"
