"""Command line: ``paper-unet`` / ``python -m paper_unet``."""

from __future__ import annotations

import argparse
import sys

from paper_unet import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paper-unet",
        description="Faithful reproduction of U-Net (Ronneberger et al., MICCAI 2015) on ISBI 2012.",
    )
    parser.add_argument("--version", action="version", version=f"paper_unet {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
