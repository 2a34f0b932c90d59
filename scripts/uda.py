#!/usr/bin/env python
"""Alias of `mtlda uda` (see `mtlda uda -h`)."""

from mtlda.commands.uda import main
from mtlda.running import run_main

if __name__ == "__main__":
    run_main(main)
