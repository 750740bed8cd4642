"""One module per pipeline stage; each has a typed config (in flows/spec.py) and one public task."""
