#!/usr/bin/env python
"""Alias of `mtlda train` (see `mtlda train -h`)."""

from mtlda.cli import run_main
from mtlda.commands.train import main

if __name__ == "__main__":
    run_main(main)
