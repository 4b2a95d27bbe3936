"""``python -m maxmargin`` (and ``torchrun -m maxmargin``) runs the command line."""
import sys

from .cli import main

sys.exit(main())
