"""``python -m vecna_async worker pkg.module:server``."""

import sys

from vecna_async.cli import main

sys.exit(main())
