"""The `ringkv` command line."""

from __future__ import annotations

import argparse
import sys

from ringkv import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ringkv", description="ringkv distributed key-value store")
    parser.add_argument("--version", action="version", version=f"ringkv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="run the store locally")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        print("ringkv: the node server arrives with issue 3; the storage engine is ready (see README).")
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
