"""`python -m loadtest.chaos --mode short|long`: see the package's docstring."""

import sys

from loadtest.chaos.run import main

if __name__ == "__main__":
    sys.exit(main())
