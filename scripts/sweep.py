#!/usr/bin/env python
"""Alias of `mtlda sweep` (see `mtlda sweep -h`)."""

from mtlda.commands.sweep import main
from mtlda.running import run_main

if __name__ == "__main__":
    run_main(main)
