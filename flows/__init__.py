"""The pipeline's flows (post-train, watch-data), its spec and its checks, and the stage runner."""
