"""HTML reports (subject and group) and the methods text with citations.

- :func:`write_subject_report` writes ``OUTPUT_DIR/sub-<label>.html``;
- :func:`write_group_report` writes ``OUTPUT_DIR/group.html`` from ``OUTPUT_DIR/group/``;
- :func:`write_citation` writes ``OUTPUT_DIR/logs/CITATION.md``.

Reports are static HTML5 with inline CSS and images embedded as base64 PNG, readable offline.
"""

from __future__ import annotations

from .citation import write_citation
from .group import write_group_report
from .subject import write_subject_report

__all__ = ["write_citation", "write_group_report", "write_subject_report"]
