"""HTML reports (subject and group) and the methods text with citations.

- :func:`write_subject_report` writes ``OUTPUT_DIR/sub-<label>.html``;
- :func:`write_group_report` writes ``OUTPUT_DIR/group.html`` from ``OUTPUT_DIR/group/``;
- :func:`write_citation` writes ``OUTPUT_DIR/logs/CITATION.md``.

Reports are static HTML5 with inline CSS and images embedded as base64 PNG, readable offline.
"""

from __future__ import annotations

__all__ = ["write_citation", "write_group_report", "write_subject_report"]

#: where each public name lives; imported on first use, so that the processing path, which
#: only draws the atlas placement (``bidsfm.reports.placement``), does not load the report
#: writers
_WHERE = {"write_citation": "citation", "write_group_report": "group",
          "write_subject_report": "subject"}


def __getattr__(name: str):
    if name in _WHERE:
        from importlib import import_module

        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
