"""``python -m mtlda <command>`` (also under ``torchrun -m mtlda``): the ``mtlda`` command line, see ``mtlda -h``."""

from mtlda.commands import run

if __name__ == "__main__":
    run()
