"""`python cli.py ...` is the same as `ddalign ...` (no install needed beyond the dependencies)."""

from ddalign.cli import main

if __name__ == "__main__":
    main()
