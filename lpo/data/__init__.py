"""Data in: calibration files, CSV/TSV/TFRecord/npz sources, and the one input caster."""
