"""``python -m mgrec`` runs the command line."""

import sys

from mgrec.cli import main

sys.exit(main())
