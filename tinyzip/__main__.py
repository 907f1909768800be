"""``python -m tinyzip`` runs the ``tinyzip`` command."""
import sys

from tinyzip.cli import main

sys.exit(main())
