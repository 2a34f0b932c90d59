#!/usr/bin/env python
"""Alias of `mtlda sde` (see `mtlda sde -h`)."""

from mtlda.cli import run_main
from mtlda.commands.sde import main

if __name__ == "__main__":
    run_main(main)
