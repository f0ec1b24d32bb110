"""`python -m drimbox.cli`: the same as the `drimbox` command."""

import sys

from drimbox.cli import main

sys.exit(main())
