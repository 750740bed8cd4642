"""`python -m alignflow.cli ...` runs the `alignflow` command."""

import sys

from alignflow.cli import main

sys.exit(main())
