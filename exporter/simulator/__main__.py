"""``python -m exporter.simulator``: serve a simulated controller (see ``--help``)."""

import sys

from exporter.simulator.cli import main

sys.exit(main())
