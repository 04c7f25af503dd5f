"""Turning observed OpenAI traffic into usage records: estimation, pricing and collection."""
