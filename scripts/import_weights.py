#!/usr/bin/env python
"""Alias of `mtlda import-weights` (see `mtlda import-weights -h`)."""

from mtlda.commands.import_weights import main
from mtlda.running import run_main

if __name__ == "__main__":
    run_main(main)
