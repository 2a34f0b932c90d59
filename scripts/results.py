#!/usr/bin/env python
"""Alias of `mtlda results` (see `mtlda results -h`)."""

from mtlda.cli import run_main
from mtlda.commands.results import main

if __name__ == "__main__":
    run_main(main)
