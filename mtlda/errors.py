"""The one base class of the errors a user can cause and fix (a bad config, a missing file, a wrong option).

The command line catches :class:`MtldaError` (and operating-system errors such as a full disk) and prints one line
naming the problem and its fix, with exit code 2. Every other exception is a bug and keeps its traceback.
Subclasses that used to be plain ``ValueError`` keep that base too, so ``except ValueError`` in user code still works.
"""

from __future__ import annotations


class MtldaError(Exception):
    """A problem the user can fix; the message names it and says how."""


class UserInputError(MtldaError, ValueError):
    """An invalid value given by the user (an option, a config value, a task code, a data set name)."""


class Interrupted(KeyboardInterrupt):
    """A run stopped on request (Ctrl-C, SIGTERM); the message says what is on disk and how to continue."""
