"""``python -m orchestrator.cli``: what cluster jobs run (cluster/jobs.py)."""

import sys

from orchestrator.cli.main import main

sys.exit(main())
