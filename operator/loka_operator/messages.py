"""Messages the operator copies from others (KubeRay, Kueue, the API server) into status and Events.

KubeRay's `status.message` can hold the driver's whole log: tens of kilobytes, any line of which may print a
credential. What reaches a condition, `status.message` or an Event is one line of at most 1 KiB, with every
value of the run's referenced Secrets replaced by `[redacted]`.

The values themselves are never kept: a `Redactor` holds only their lengths and SHA-256 digests and finds them
by hashing the windows of a message of each length.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_MESSAGE_BYTES = 1024
REDACTED = "[redacted]"
ELLIPSIS = "…"
# Shorter values (e.g. "1", "true") would redact ordinary words; no credential is that short.
MIN_SECRET_LENGTH = 6


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


@dataclass(frozen=True)
class Redactor:
    """Finds the run's secret values in a text without holding them: (length -> digests)."""

    digests: dict[int, frozenset[bytes]] = field(default_factory=dict)

    @classmethod
    def of(cls, values: Iterable[str]) -> Redactor:
        by_length: dict[int, set[bytes]] = {}
        for value in values:
            for candidate in {value, value.strip()}:
                if len(candidate) >= MIN_SECRET_LENGTH:
                    by_length.setdefault(len(candidate), set()).add(_digest(candidate))
        return cls({length: frozenset(found) for length, found in by_length.items()})

    def redact(self, text: str, *, keep: int | None = None) -> str:
        """``text`` with every value replaced; with ``keep``, stop once that many characters are out."""
        lengths = sorted(self.digests, reverse=True)  # longest first: a value may contain a shorter one
        out: list[str] = []
        kept = i = 0
        while i < len(text) and (keep is None or kept < keep):
            length = next((n for n in lengths if _digest(text[i : i + n]) in self.digests[n]), None)
            if length is None:
                out.append(text[i])
                kept, i = kept + 1, i + 1
            else:
                out.append(REDACTED)
                kept, i = kept + len(REDACTED), i + length
        return "".join(out)


NO_SECRETS = Redactor()


def brief(text: str | None, redactor: Redactor = NO_SECRETS) -> str:
    """The first non-empty line, secrets redacted, cut to at most 1 KiB (UTF-8) with an ellipsis."""
    if not text:
        return ""
    line = next((stripped for raw in text.splitlines() if (stripped := raw.strip())), "")
    # Redact before cutting (a value across the cut would leak its head), and only as far as the cut keeps.
    line = redactor.redact(line, keep=MAX_MESSAGE_BYTES + 1) if redactor.digests else line
    encoded = line.encode()
    if len(encoded) <= MAX_MESSAGE_BYTES:
        return line
    budget = MAX_MESSAGE_BYTES - len(ELLIPSIS.encode())
    return encoded[:budget].decode(errors="ignore").rstrip() + ELLIPSIS


# KubeRay puts the driver's log under this line when the entrypoint fails; the cause is at the log's end.
DRIVER_LOG_PREAMBLE = "last available logs"


def cause(text: str | None, redactor: Redactor = NO_SECRETS) -> str:
    """The one line that says why: for KubeRay's "Job entrypoint command failed ..., last available logs ...:"
    the last meaningful line of the log under it, else the first line; secrets redacted, cut as `brief` cuts."""
    if not text:
        return ""
    lines = text.splitlines()
    first = next((index for index, line in enumerate(lines) if line.strip()), 0)
    if DRIVER_LOG_PREAMBLE in lines[first]:
        meaningful = [line for line in lines[first + 1 :] if any(ch.isalnum() for ch in line)]
        if meaningful:
            return brief(meaningful[-1], redactor)
    return brief(text, redactor)
