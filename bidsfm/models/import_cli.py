"""``bidsfm-import`` entry point (console script and ``python -m bidsfm.models.import_cli``).

The command lives in :mod:`bidsfm.models.importers.cli`; this module keeps the installed
console script and the documented ``python -m`` path working.
"""

from __future__ import annotations

from .importers.cli import EXIT_ERROR, import_command, main

__all__ = ["EXIT_ERROR", "import_command", "main"]

if __name__ == "__main__":  # pragma: no cover
    main()
