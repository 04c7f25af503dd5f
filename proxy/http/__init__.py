"""The reserved /_proxy/ endpoints (routes.py wires them): health, usage and metrics. Nothing
under /_proxy/ is ever forwarded upstream."""
