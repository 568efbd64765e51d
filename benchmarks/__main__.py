"""``python -m benchmarks``: every benchmark case (see `runner.py`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the scripts import each other by name

from runner import main  # noqa: E402

sys.exit(main())
