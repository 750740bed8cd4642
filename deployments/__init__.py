"""Pipeline specs per environment; `demo.yaml` runs anywhere."""
