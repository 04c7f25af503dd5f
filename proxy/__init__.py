"""usage-proxy: a transparent OpenAI reverse proxy that records who spent what."""

__all__ = ["__version__"]

__version__ = "0.1.0"
