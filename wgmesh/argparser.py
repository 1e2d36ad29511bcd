"""The argument parser every `wgmesh` group uses: a bad argument is one line naming it, exit status 2.

argparse's default prints the whole usage before the error; for a mistyped value that is noise the
person has to read past. `--help` still shows everything.
"""

from __future__ import annotations

import argparse
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are `PROG: MESSAGE (see --help)`; its subparsers are the same."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")
