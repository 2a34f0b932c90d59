"""The command-line programs of mtlda: one module per command, each with ``main(argv) -> exit code``.

``mtlda <command>`` (and ``python -m mtlda <command>``) dispatches to them; ``scripts/*.py`` are thin aliases.
"""
