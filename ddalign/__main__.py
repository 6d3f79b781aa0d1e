"""`python -m ddalign ...` (and `accelerate launch -m ddalign ...`) == `ddalign ...`."""

from ddalign.cli import main

if __name__ == "__main__":
    main()
