"""``python -m gradmask`` (what ``torchrun ... -m gradmask train`` launches)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
