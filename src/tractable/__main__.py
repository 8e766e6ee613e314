"""``python -m tractable ...`` (also ``torchrun ... -m tractable train ...``): the console script."""
from tractable.cli.main import entry

entry()
