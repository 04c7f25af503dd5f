"""The Azure OpenAI deployment a request names in its path. Pure.

Azure's data-plane paths are `{prefix}/deployments/{name}/{operation}` (the prefix is
`/openai` on Azure's own hosts, anything else behind a gateway): the segment after
`deployments` is the name, whatever the host or the prefix. OpenAI's paths have no such
segment, so their rows keep no deployment.
"""

from __future__ import annotations

from urllib.parse import unquote

__all__ = ["deployment_of"]

_MAX = 255


def deployment_of(path: str) -> str | None:
    """The deployment name in `path`, or None."""
    parts = path.split("/")
    for i, part in enumerate(parts[:-2]):
        if part == "deployments" and parts[i + 1]:
            return unquote(parts[i + 1])[:_MAX]
    return None
