"""Real English text that ships with Python itself, for the examples (no download).

``pydoc_data.topics`` holds CPython's reference documentation (the text ``help()`` shows, about
465,000 characters of prose and grammar); a file can be given instead.
"""

from __future__ import annotations

from pathlib import Path


def read_text(path: Path | None = None) -> tuple[str, str]:
    """``(text, source)``: ``path``'s content, or Python's own reference documentation."""
    if path is not None:
        return path.read_text(encoding="utf-8"), str(path)
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics)), "pydoc_data.topics (CPython docs)"


def token_windows(ids: list[int], tokens: int, windows: int) -> list[list[int]]:
    """``windows`` windows of ``tokens`` ids spread evenly over ``ids``; ``ValueError`` when the
    text is too short."""
    if len(ids) < tokens * windows:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than {tokens * windows}")
    stride = (len(ids) - tokens) // (windows - 1) if windows > 1 else 0
    return [ids[w * stride : w * stride + tokens] for w in range(windows)]
