"""`python -m switch.cli.main` runs the `eum` command line."""

import sys

from switch.cli.main import main

sys.exit(main())
