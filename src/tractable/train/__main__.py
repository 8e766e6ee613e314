"""``python -m tractable.train [config.yaml] key=value ...`` — see :func:`tractable.train.run.main`."""
import sys

from tractable.train.run import main

if __name__ == "__main__":
    sys.exit(main())
