"""Issue #7's scale-and-faults suite: real `usage-proxy serve` processes in front of the fake
upstream, with faults injected (SIGKILL, a database outage, upstream 429/500/drops), and the
security and resource-bound walks. See docs/fault-suite.md."""
