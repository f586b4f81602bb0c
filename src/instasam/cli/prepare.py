"""`instasam prepare` (not yet implemented)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Placeholder until the command lands."""
