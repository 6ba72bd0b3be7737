"""`cnd-fab`: the same tasks as the fabfile, usable from any directory, on the standard library.

`fab` runs the tasks through Fabric and Invoke (tasks.py). This program builds the same tasks
with argparse from the same option table (cnd_fab.options.OPTIONS) and runs the same bodies
(cnd_fab.commands), so neither front end can drift from the other. It exists apart because
importing Invoke takes about 0.2 s, which every `cnd-fab` command would pay before doing
anything.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, NoReturn, Optional

from . import __version__
from .commands import TASKS, run_task
from .errors import CndError
from .flags import FLAG
from .options import options_for


class OneLineParser(argparse.ArgumentParser):
    """Bad flags are one line on stderr and exit 2, like every other input error."""

    def error(self, message: str) -> NoReturn:
        """Print `cnd-fab: message` and exit 2."""
        self.exit(2, f"cnd-fab: {message} (see `{self.prog} --help`)\n")


def build_parser() -> OneLineParser:
    """The program's parser: one subcommand per task, one flag per option of the table."""
    parser = OneLineParser(
        prog="cnd-fab",
        description="Cloud Nonce Discovery: find the lowest golden nonce over a fleet of SSH hosts.",
    )
    parser.add_argument("--version", action="version", version=f"cnd-fab {__version__}")
    tasks = parser.add_subparsers(dest="task", metavar="TASK", parser_class=OneLineParser)
    for name, (summary, _) in TASKS.items():
        task = tasks.add_parser(name, help=summary, description=summary)
        for option in options_for(name):
            flag = f"--{option.name}"
            if option.kind == FLAG:
                task.add_argument(flag, dest=option.param, action="store_true", help=_literal(option.help))
            else:
                # Values reach the parsers as text: their checks give the one-line errors.
                task.add_argument(
                    flag, dest=option.param, metavar=option.name.split("-")[-1].upper(), help=_literal(option.help)
                )
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    """The cnd-fab command: the same tasks as `fab`, without a fabfile."""
    parser = build_parser()
    arguments = vars(parser.parse_args(sys.argv[1:] if argv is None else argv))
    name = arguments.pop("task")
    if name is None:
        parser.print_help()
        sys.exit(0)
    try:
        code = run_task(name, arguments)
    except CndError as error:
        print(f"cnd-fab: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    sys.exit(code)


def run_program() -> NoReturn:
    """The `cnd-fab` console script: main(), then an exit without the interpreter's teardown.

    When main() returns, every host is released and every record is written. A normal exit
    would then spend about 50 ms unloading modules, on every command. Tests call main()."""
    try:
        main()
        code: object = 0
    except SystemExit as leaving:
        code = leaving.code
    from remote.worker import exit_promptly  # the worker's own: a search has imported it already

    exit_promptly(code)
    raise AssertionError("exit_promptly() returned")  # for the type checker: it never does


def _literal(text: str) -> str:
    """Help text as argparse prints it as written: it formats help with %, so "95%" must be "95%%"."""
    return text.replace("%", "%%")
