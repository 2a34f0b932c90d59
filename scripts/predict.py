#!/usr/bin/env python
"""Alias of `mtlda predict` (see `mtlda predict -h`)."""

from mtlda.commands.predict import main
from mtlda.running import run_main

if __name__ == "__main__":
    run_main(main)
