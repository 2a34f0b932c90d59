#!/usr/bin/env python
"""Alias of `mtlda prepare-normals` (see `mtlda prepare-normals -h`)."""

from mtlda.commands.prepare_normals import main
from mtlda.running import run_main

if __name__ == "__main__":
    run_main(main)
