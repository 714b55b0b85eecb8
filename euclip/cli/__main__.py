"""``python -m euclip.cli ...`` (what ``torchrun -m euclip.cli`` runs): the ``euclip`` command."""

import sys

from euclip.cli import main

sys.exit(main())
