"""The `usage-proxy` command: serve, migrate, report, keys, projects, sql, estimate, calibrate.

Commands stay thin: parse, call, format. Every command takes --database-url and --config with
the precedence of proxy.settings (flag > environment > config file > default). Secrets
(key_secret, admin_token) have no flags: flags show in `ps`.

root.py builds the parser and runs a command; each command group is a module of its own
(serve.py: serve and migrate; report.py; mappings.py: keys and projects; sql.py;
calibration.py: estimate and calibrate) with an
`add_commands(sub, common)`; common.py holds what they share.

Exit codes: 0 success; 2 a bad argument or setting (one `usage-proxy: error: ...` line on
stderr); 1 anything else (one line, no traceback).
"""

from proxy.cli.root import main

__all__ = ["main"]
