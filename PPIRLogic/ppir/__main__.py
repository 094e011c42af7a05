"""``python -m ppir``: the same as the ``ppir`` command."""
import sys

from .cli import main

sys.exit(main())
