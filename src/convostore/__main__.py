"""``python -m convostore``: the command line."""

from .cli import main

main()
