"""The bibliography lives in :mod:`bidsfm.references` (one owner); kept importable here."""

from ..references import REFERENCES, reference

__all__ = ["REFERENCES", "reference"]
