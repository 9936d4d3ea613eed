"""``python -m ebcompress`` (and ``torchrun -m ebcompress``) runs the command line."""

from ebcompress.cli.app import main

main()
