"""`python -m pytest_llmserve.cli ...`: the `llmserve` console script."""

import sys

from . import main

sys.exit(main())
