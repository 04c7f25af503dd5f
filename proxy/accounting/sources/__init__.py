"""One folder per billable source: how its objects are recognised (pure), turned into usage
rows (pure), and seen or collected.

- events/: responses, chat completions and embeddings, recorded from the exchange itself.
- assistants/: Assistants runs, which report no usage per run: a finished run becomes a
  collection job (source "assistants.run"), which the collector claims and records.

A next source that must fetch after the fact (the Batch API) is a folder like assistants/:
its observer writes jobs with its own `source` (proxy.db.jobs.NewJob), its collector claims
only those (`jobs.claim(source=...)`), and a migration adds the columns its jobs need.
"""
