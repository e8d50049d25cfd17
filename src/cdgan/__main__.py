"""`python -m cdgan` runs the console script."""

from cdgan.cli import main

main()
