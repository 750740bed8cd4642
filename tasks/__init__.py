"""One module per pipeline stage; each holds its typed, documented config and one public task."""
