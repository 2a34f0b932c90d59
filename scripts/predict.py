#!/usr/bin/env python
"""Alias of `mtlda predict` (see `mtlda predict -h`)."""

from mtlda.cli import run_main
from mtlda.commands.predict import main

if __name__ == "__main__":
    run_main(main)
