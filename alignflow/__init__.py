"""alignflow: an LLM post-training pipeline on Prefect. See README.md.

The base every package stands on (errors, processes, home, names, secrets, imports), and the two entry
points that stand on everything: the command line (cli/) and the Prefect service (service/).
"""

__version__ = "0.1.0"
