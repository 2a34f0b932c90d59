"""The command-line programs of mtlda: one module per command, each with ``main(argv) -> exit code``.

``mtlda <command>`` (and ``python -m mtlda <command>``) dispatches to them through :data:`COMMANDS`; a command's
module is imported only when it runs, so ``mtlda -h`` stays fast. ``scripts/*.py`` are thin aliases. Adding a
command is one line in :data:`COMMANDS` naming its summary and module.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import mtlda
from mtlda.errors import UserInputError


class Command(NamedTuple):
    """A subcommand: its one-line summary and the module holding its ``main`` (None: not built in yet)."""

    summary: str
    module: str | None


COMMANDS: dict[str, Command] = {
    "train": Command("supervised multi-task training (default: the toycity demo)", "mtlda.commands.train"),
    "uda": Command("multi-task unsupervised domain adaptation, labelled source -> unlabelled target",
                   "mtlda.commands.uda"),
    "sde": Command("segmentation with self-supervised monocular depth", "mtlda.commands.sde"),
    "evaluate": Command("evaluate a checkpoint on a validation split", "mtlda.commands.evaluate"),
    "predict": Command("predict every task of a trained model on images", "mtlda.commands.predict"),
    "results": Command("aggregate finished runs over seeds into tables and plots", "mtlda.commands.results"),
    "check-data": Command("check a data set folder before training", "mtlda.commands.check_data"),
    "prepare-normals": Command("precompute surface normals from a data set's depth",
                               "mtlda.commands.prepare_normals"),
    "benchmark": Command("training-step time and memory of every speed option, side by side",
                         "mtlda.commands.benchmark"),
    "sweep": Command("run a grid of config overrides over seeds, resumably, into one results table",
                     "mtlda.commands.sweep"),
    "import-weights": Command("import published weights into an mtlda checkpoint", "mtlda.commands.import_weights"),
    "export": Command("export a trained model to TorchScript or ONNX", "mtlda.commands.export"),
    "export-weights": Command("write a weights-only file (model, config, metadata) of a checkpoint",
                              "mtlda.commands.export_weights"),
}
HELP_FLAGS = ("-h", "--help")
# The source checkout holding the package (its scripts/ folder runs the commands not built in yet).
SOURCE_ROOT = Path(mtlda.__file__).resolve().parents[1]


def usage() -> str:
    """The text of ``mtlda -h``: every command with its summary."""
    width = max(map(len, COMMANDS)) + 2
    lines = ["usage: mtlda <command> [options]   (mtlda <command> -h: the command's options)", "",
             f"mtlda {mtlda.__version__}: dense multi-task learning (semantic segmentation, depth, surface normals, "
             "edges), supervised, UDA and SDE", "", "commands:"]
    for name, command in COMMANDS.items():
        pending = "" if command.module else " (not built in yet)"
        lines.append(f"  {name:<{width}}{command.summary}{pending}")
    return "\n".join(lines)


def find_command(name: str) -> Command:
    """The command called ``name``, or an error listing the valid ones."""
    if name in COMMANDS:
        command = COMMANDS[name]
        if command.module is None:
            script = SOURCE_ROOT / "scripts" / f"{name.replace('-', '_')}.py"
            instead = f": run python {script} instead" if script.is_file() else " (it comes in a later version)"
            raise UserInputError(f"mtlda {name} is not built into this version yet{instead}")
        return command
    close = difflib.get_close_matches(name, COMMANDS, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise UserInputError(f"unknown command {name!r}: {hint}choose one of {', '.join(COMMANDS)} (mtlda -h)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mtlda <command> [options]``: the command's ``main`` with the remaining arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(usage(), file=sys.stderr)
        return 2
    if args[0] in HELP_FLAGS:
        print(usage())
        return 0
    if args[0] == "--version":
        print(f"mtlda {mtlda.__version__}")
        return 0
    name, rest = args[0], args[1:]
    command_main = importlib.import_module(find_command(name).module).main
    program = sys.argv[0]
    sys.argv[0] = f"mtlda {name}"  # argparse's program name in the command's usage and errors
    try:
        return command_main(rest)
    finally:
        sys.argv[0] = program


def run() -> None:
    """The ``mtlda`` console script: :func:`main` under the error conventions of :func:`mtlda.running.run_main`
    (help and version are answered without importing torch)."""
    args = sys.argv[1:]
    if not args or args[0] in (*HELP_FLAGS, "--version"):
        sys.exit(main(args))
    from mtlda.running import run_main

    run_main(main)
