"""Running a command: the error conventions and exit codes of every mtlda program (no heavy imports).

Bad input (a missing file, an unknown config key, an unset data set variable, a NaN loss, a full disk) prints one
line on stderr naming the problem and its fix and exits with code 2, without a traceback (set ``MTLDA_DEBUG=1`` to
see one): every error a user can cause is an :class:`~mtlda.errors.MtldaError` (or an operating-system error).
Any other exception is a bug and keeps its traceback. Ctrl-C / SIGTERM exit with 130 after the engine has saved
``last.pt``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from mtlda.data.errors import original_message
from mtlda.errors import MtldaError


def user_message(err: BaseException) -> str:
    """The one line shown for a user error (also for one raised in a DataLoader worker)."""
    text = original_message(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def run_main(main: Callable[[], int | None]) -> None:
    """Run a program's ``main`` with the error conventions above and exit with its code."""
    try:
        code = main() or 0
    except KeyboardInterrupt as stop:
        print(f"interrupted: {stop}" if str(stop) else "interrupted", file=sys.stderr)
        code = 130
    except (MtldaError, OSError) as err:
        if os.environ.get("MTLDA_DEBUG"):
            raise
        print(f"error: {user_message(err)}", file=sys.stderr)
        code = 2
    sys.exit(code)
