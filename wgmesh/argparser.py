"""The argument parser every `wgmesh` group uses: a bad argument is one line naming it, exit status 2.

argparse's default prints the whole usage before the error; for a mistyped value that is noise the
person has to read past. `--help` still shows everything.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are `PROG: MESSAGE (see --help)`; its subparsers are the same.
    Options are never abbreviated: `--token KEY` must not be taken for `--token-file KEY`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")
