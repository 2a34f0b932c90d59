#!/usr/bin/env python
"""Alias of `mtlda evaluate` (see `mtlda evaluate -h`)."""

from mtlda.commands.evaluate import main
from mtlda.running import run_main

if __name__ == "__main__":
    run_main(main)
