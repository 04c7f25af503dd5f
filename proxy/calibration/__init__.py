"""Calibration: recorded runs with reported usage in, fitted estimate constants out."""
