"""The pipeline's flows, its spec and its command line."""
