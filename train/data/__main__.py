"""`python -m train.data`: read a dataset and print its counts (see train/data/cli.py)."""

from train.data.cli import main

if __name__ == "__main__":
    main()
