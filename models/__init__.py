"""Detectors, synthetic CT phantoms and their training/evaluation code (no service imports)."""
