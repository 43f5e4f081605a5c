"""`python -m jax_dtypeguard audit ...`: the `jax-dtypeguard` command."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
