"""``python -m global_buffer``: see :mod:`global_buffer.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
