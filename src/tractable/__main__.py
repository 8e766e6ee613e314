"""``python -m tractable ...`` (also ``torchrun ... -m tractable train ...``): the console script."""
import sys

from tractable.cli.main import main

sys.exit(main())
