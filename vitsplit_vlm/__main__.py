"""``python -m vitsplit_vlm ...`` (and ``torchrun ... -m vitsplit_vlm dense train ...``): the
`vitsplit-vlm` command."""

import sys

from .cli import main

sys.exit(main())
