#!/usr/bin/env python
"""Alias of `mtlda evaluate` (see `mtlda evaluate -h`)."""

from mtlda.cli import run_main
from mtlda.commands.evaluate import main

if __name__ == "__main__":
    run_main(main)
