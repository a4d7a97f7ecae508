"""`python -m device` runs the agent's command line (the `clad-agent` entry point)."""

import sys

from device.cli import main

sys.exit(main())
