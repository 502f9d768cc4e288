"""`python -m huginn` is the `huginn` command."""

from huginn.cli import main

if __name__ == "__main__":
    main()
