"""bidsfm: brain-network foundation models on fMRIPrep derivatives."""

__version__ = "0.2.0"
