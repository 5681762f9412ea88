"""`python -m fastdissect.cli`: the `fastdissect` command."""

import sys

from .main import main

sys.exit(main())
