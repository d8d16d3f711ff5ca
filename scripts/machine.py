"""`scripts/machine`: docker-machine's commands over the project's stacks (see scripts/machinecli)."""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT):  # machinecli, and the project's components (TLS, drivers, config)
    if path not in sys.path:
        sys.path.insert(0, path)

from machinecli.app import main  # noqa: E402

if __name__ == "__main__":
    main([os.environ.get("DMP_ARGV0", sys.argv[0]), *sys.argv[1:]])
