"""Settings: one declaration per option (options.py), read from flags, the environment, a
TOML file and defaults, in that precedence (load.py)."""

from proxy.settings.load import load_settings
from proxy.settings.options import OPTIONS, Option, Settings, mask_url

__all__ = ["OPTIONS", "Option", "Settings", "load_settings", "mask_url"]
