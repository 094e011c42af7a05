"""``python -m ppir``: the same as the ``ppir`` command."""
import sys

from ppir.app.cli import main

sys.exit(main())
