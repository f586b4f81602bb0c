"""The ``instasam`` command line: one sub-command per module in this package.

Each command module exposes ``add_parser(subparsers)``, which registers its parser and sets
``func`` (a callable taking the parsed arguments and returning an exit status). Errors in
the user's input (:class:`~instasam.errors.InputError`) become one line on stderr and exit
status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from instasam import __version__
from instasam.errors import InputError

COMMAND_MODULES = (
    "prepare",
    "pseudo",
    "train",
    "predict",
    "postprocess",
    "tune",
    "predict_wsi",
    "predict_cohort",
    "evaluate",
    "weights",
    "models",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instasam",
        description="Nuclei instance segmentation in H&E from one point per nucleus (InstaSAM).",
    )
    parser.add_argument("--version", action="version", version=f"instasam {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"instasam.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"instasam: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "instasam: interrupted; finished work is kept and the run can resume", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
