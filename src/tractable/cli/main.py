"""`tractable` console entry point."""
import sys


def main(argv=None) -> int:
    print("tractable: commands are coming", file=sys.stderr)
    return 0
