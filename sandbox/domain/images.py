"""Image references: the engine's grammar, and the one spelling every host reports.

An environment names its base image by reference (`debian:bookworm`, `registry:5000/team/img`,
`img@sha256:...`). A reference the engine cannot parse, or one no sandbox host holds, can
never run: registration refuses it (400) instead of letting every rollout of that
environment fail to provision. Nothing is ever pulled: these machines reach no registry,
so an image is on a host because someone built or loaded it there.
"""

from __future__ import annotations

import re

# The engine's grammar (distribution/reference): lowercase path components separated by
# '/', an optional registry host (with a port) in front, an optional tag, an optional digest.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}"
REFERENCE_RE = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::{_TAG})?(?:@{_DIGEST})?\Z")
IMAGE_ID_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
_DEFAULT_DOMAINS = ("docker.io/library/", "docker.io/", "index.docker.io/library/", "index.docker.io/")


def reference_problem(ref: str) -> str | None:
    """Why the engine could not parse `ref`, or None when it can."""
    if IMAGE_ID_RE.match(ref):
        return None
    if len(ref) > 255:
        return "is longer than 255 characters"
    if not REFERENCE_RE.match(ref):
        return (
            "is not an image reference the engine accepts (lowercase name components separated by '/', "
            "an optional ':tag' and '@sha256:digest', e.g. 'debian:bookworm')"
        )
    return None


def canonical(ref: str) -> str:
    """The spelling the engine lists a local image under: `debian` is `debian:latest`,
    `docker.io/library/debian:12` is `debian:12`. Image ids and digests stay as given."""
    if IMAGE_ID_RE.match(ref) or "@" in ref:
        return ref
    for prefix in _DEFAULT_DOMAINS:
        if ref.startswith(prefix):
            ref = ref[len(prefix) :]
            break
    last = ref.rsplit("/", 1)[-1]
    return ref if ":" in last else f"{ref}:latest"
