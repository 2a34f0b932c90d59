#!/usr/bin/env python
"""Alias of `mtlda results` (see `mtlda results -h`)."""

from mtlda.commands.results import main
from mtlda.running import run_main

if __name__ == "__main__":
    run_main(main)
