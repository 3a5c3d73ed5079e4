"""``python -m tensorpool``: the launcher (see ``tensorpool.launcher``)."""

import sys

from tensorpool.launcher import main

sys.exit(main())
