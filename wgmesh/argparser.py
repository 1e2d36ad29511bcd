"""The argument parser every `wgmesh` group uses: a bad argument is one line naming it, exit status 2;
and `UsageError`, for the bad input a group finds itself after parsing (a value from a config file, a
file an option names, options that do not go together), which its `main` shows the same way.

argparse's default prints the whole usage before the error; for a mistyped value that is noise the
person has to read past. `--help` still shows everything.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

USAGE_EXIT = 2
"""The exit status of a usage error, as argparse's own."""


class UsageError(Exception):
    """Bad command-line input: the message is the one line shown, and the command exits USAGE_EXIT."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are `PROG: MESSAGE (see --help)`; its subparsers are the same.
    Options are never abbreviated: `--token KEY` must not be taken for `--token-file KEY`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_EXIT, f"{self.prog}: {message} (see --help)\n")
