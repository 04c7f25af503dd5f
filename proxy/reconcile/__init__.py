"""Reconciling with the bill: billed costs pulled from the provider, matched to the proxy's
keys, compared with what the proxy recorded, and trued up."""
