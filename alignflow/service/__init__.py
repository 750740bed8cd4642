"""Running alignflow as a service: the Prefect server and worker (server.py) and the deployments with their
automations (deployments.py)."""
