#!/usr/bin/env python
"""Alias of `mtlda export` (see `mtlda export -h`)."""

from mtlda.commands.export import main
from mtlda.running import run_main

if __name__ == "__main__":
    run_main(main)
