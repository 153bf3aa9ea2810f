"""`python -m learngene_tools.cli` (torchrun -m learngene_tools.cli ...)."""

from learngene_tools.cli.app import main

main()
