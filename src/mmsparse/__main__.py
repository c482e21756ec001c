"""``python -m mmsparse`` runs the command-line tool."""

import sys

from mmsparse.cli.main import main

sys.exit(main())
