"""`python -m stopwise` is the `stopwise` command."""

import sys

from .cli import main

sys.exit(main())
