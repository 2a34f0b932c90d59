#!/usr/bin/env python
"""Alias of `mtlda benchmark` (see `mtlda benchmark -h`)."""

from mtlda.commands.benchmark import main
from mtlda.running import run_main

if __name__ == "__main__":
    run_main(main)
