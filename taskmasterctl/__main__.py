"""`python -m taskmasterctl`."""
import sys

from .cli import main

sys.exit(main())
