"""``python -m tractable.train [config.yaml] key=value ...`` — see :func:`tractable.train.run.main`."""
from tractable.train.distributed import exit_process
from tractable.train.run import main

if __name__ == "__main__":
    exit_process(main())  # under torchrun a successful run skips the interpreter teardown
