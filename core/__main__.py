"""``python -m core``: the command line (see ``core.cli``)."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    try:
        from core.cli import finish, main
    except KeyboardInterrupt:  # Ctrl-C while Python is still importing
        print("error: interrupted; nothing was done.", file=sys.stderr)
        sys.exit(130)
    finish(main())
