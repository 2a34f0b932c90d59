#!/usr/bin/env python
"""Alias of `mtlda sde` (see `mtlda sde -h`)."""

from mtlda.commands.sde import main
from mtlda.running import run_main

if __name__ == "__main__":
    run_main(main)
