"""``python -m tcletd``: the same entry point as the ``tcletd`` console script (host side)."""

from tcletd.cli.main import entry

if __name__ == "__main__":
    entry()
