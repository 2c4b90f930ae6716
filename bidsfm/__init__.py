"""bidsfm: brain-network foundation models on fMRIPrep derivatives."""

__version__ = "0.1.0"
