#!/usr/bin/env python
"""Alias of `mtlda check-data` (see `mtlda check-data -h`)."""

from mtlda.commands.check_data import main
from mtlda.running import run_main

if __name__ == "__main__":
    run_main(main)
