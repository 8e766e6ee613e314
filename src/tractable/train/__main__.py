"""``python -m tractable.train [config.yaml] key=value ...`` — see :func:`tractable.train.run.main`."""
import sys

from tractable.train.distributed import launched_by_torchrun, skip_interpreter_teardown
from tractable.train.run import main

if __name__ == "__main__":
    code = main()
    if code == 0 and launched_by_torchrun():  # see skip_interpreter_teardown: a C++ teardown abort under load
        skip_interpreter_teardown(0)
    sys.exit(code)
