#!/usr/bin/env python
"""Alias of `mtlda uda` (see `mtlda uda -h`)."""

from mtlda.cli import run_main
from mtlda.commands.uda import main

if __name__ == "__main__":
    run_main(main)
