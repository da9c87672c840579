"""`python -m flor_lib serve [GPU] [--pool P]` (FlorDB's `python -m flor serve`): a worker; else the flor CLI."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Start a worker for `serve [GPU]`, else run the `flor` command line with argv."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        rest = argv[1:]
        if rest and rest[0].isdigit():
            argv = ["worker", "--gpu", rest[0], *rest[1:]]
        elif rest and not rest[0].startswith("-"):
            print("flor: error: usage: python -m flor_lib serve [GPU] [--pool NAME]  (e.g. serve 0)",
                  file=sys.stderr)
            return 2
        else:
            argv = ["worker", "--cpu", *rest]
    from flor_flows.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
