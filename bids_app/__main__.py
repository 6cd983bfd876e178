"""``python -m bids_app`` = ``vbm-predict``."""

import sys

from .cli.main import main

sys.exit(main())
