"""`python -m edgeplug` is the `edgeplug` command."""

from .cli import main

main()
