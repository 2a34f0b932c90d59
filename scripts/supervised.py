#!/usr/bin/env python
"""Alias of `mtlda train` (see `mtlda train -h`)."""

from mtlda.commands.train import main
from mtlda.running import run_main

if __name__ == "__main__":
    run_main(main)
