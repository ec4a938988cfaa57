"""`python -m asymviz ...`: see asymviz/cli.py."""

import sys

from asymviz.cli import main

sys.exit(main())
