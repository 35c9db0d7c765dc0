"""The `file_f1` grader: which files the agent selected, against the files a human edited.

Pure functions (no I/O). Paths are canonicalised against the workspace so `./src/a.py`,
`/workspace/src/a.py` and `src/a.py` are one file.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .scores import clamp01 as _clamp01

WORKDIR = "/workspace"

_QUOTES = "\"'`"
_WRAPPING = " \t\r\n" + _QUOTES


def canonical_path(path: str, workdir: str = WORKDIR) -> str | None:
    """Normalise a path an agent wrote to the workspace-relative form the reference uses.

    Strips whitespace, quotes and backticks, './', the workspace prefix (absolute or relative), trailing
    slashes, empty and '.' segments, and resolves '..' lexically (no file system). None for an empty path or
    one that escapes the workspace (absolute outside `workdir`, or '..' above its root): it can never match.
    """
    text = path.strip(_WRAPPING) if isinstance(path, str) else ""
    if not text or "\x00" in text:
        return None
    root = workdir.strip("/")
    norm = posixpath.normpath(text.lstrip("/"))  # relative, so '..' above the root survives and is caught
    if norm == ".." or norm.startswith("../"):
        return None
    if root and (norm == root or norm.startswith(root + "/")):
        norm = norm[len(root) + 1 :]
    elif root and text.startswith("/"):
        return None
    return norm if norm not in ("", ".") else None


_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
_BULLET = re.compile(r"^(?:[-*+\u2022]|\d+[.)])\s+")
_TRAILING_COMMA = re.compile(r",\s*([\]}])")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]+$")
_SEPARATORS = "-\u2013\u2014:(#"


def _paths_from_json(obj: Any) -> list[str] | None:
    """A list of paths, or {"files"/"paths": [...]}; items may be {"path": ...}. None when the shape is wrong."""
    if isinstance(obj, dict):
        obj = next((obj[k] for k in ("files", "paths") if isinstance(obj.get(k), list)), None)
    if not isinstance(obj, list):
        return None
    out: list[str] = []
    for item in obj:
        if isinstance(item, dict):
            item = item.get("path", item.get("file"))
        if isinstance(item, str):
            out.append(item)
    return out


def _loads(text: str) -> Any:
    """json.loads that forgives trailing commas (models write them) and answers None instead of raising."""
    try:
        return json.loads(_TRAILING_COMMA.sub(r"\1", text))
    except (ValueError, RecursionError):
        return None


def _looks_like_path(token: str) -> bool:
    return bool(token) and not any(c.isspace() for c in token) and ("/" in token or bool(_EXTENSION.search(token)))


def _line_paths(line: str) -> list[str]:
    """The path(s) on one line of a plain-text answer; prose lines yield nothing."""
    text = _BULLET.sub("", line.strip()).strip().strip("*").strip().rstrip(",;").strip()
    if not text or text.startswith("```") or not re.search(r"\w", text):
        return []
    if text[0] in _QUOTES and (end := text.find(text[0], 1)) > 1:
        return [text[1:end]]  # an explicitly quoted path may contain spaces; what follows is a description
    if not any(c.isspace() for c in text):
        return [] if text.endswith(":") else [text]  # 'Files:' is a header, not a file
    items = [t.strip().strip(_WRAPPING) for t in text.split(",")]
    if len(items) > 1 and all(_looks_like_path(t) for t in items):
        return items
    head, rest = text.split(None, 1)
    head = head.strip(_QUOTES)
    if _looks_like_path(head.rstrip(":")) and (head.endswith(":") or rest[0] in _SEPARATORS):
        return [head.rstrip(":")]  # 'src/a.py - why it matters'
    return []


def _paths_from_text(text: str) -> list[str]:
    blocks = _FENCE.findall(text)
    body = "\n".join(blocks) if blocks else text
    whole = _paths_from_json(_loads(body.strip()))
    if whole is not None:
        return whole
    for opening, closing in ("[]", "{}"):
        embedded = _paths_from_json(_loads(body[body.find(opening) : body.rfind(closing) + 1]))
        if embedded:  # an empty embedded list is more likely prose than an answer
            return embedded
    return [path for line in body.splitlines() for path in _line_paths(line)]


def selected_files(sample: Mapping[str, Any]) -> list[str]:
    """The files the agent selected, raw (not canonicalised), in the order it wrote them.

    A structured `output_json` wins (list, or {"files"/"paths": [...]}), even when empty: it is the answer the
    agent chose to give. Otherwise `output_text` is read as JSON (whole, inside code fences, or embedded in
    prose), and failing that one path per line, dropping bullets, quotes, trailing commas and prose lines.
    """
    structured = _paths_from_json(sample.get("output_json"))
    if structured is not None:
        return structured
    text = sample.get("output_text")
    return _paths_from_text(text) if isinstance(text, str) else []


@dataclass(frozen=True)
class FileF1Result:
    score: float
    precision: float
    recall: float
    beta: float
    selected: list[str]  # canonical, de-duplicated, order of first appearance
    matched: list[str]  # selected ∩ reference
    hallucinated: list[str]  # selections that are not workspace files (escaping paths kept as written)
    missed: list[str]  # reference paths not selected

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _canonical_reference(reference: Iterable[str], workdir: str) -> list[str]:
    """A reference path that is not a workspace path means the dataset row is broken, not the model."""
    canon = [(raw, canonical_path(raw, workdir)) for raw in reference]
    broken = [raw for raw, path in canon if path is None]
    if broken:
        raise ValueError(f"reference path {broken[0]!r} is not a path inside the workspace")
    return _dedupe(path for _, path in canon if path)


def _canonical_selection(selected: Iterable[str], workdir: str) -> tuple[list[str], list[str]]:
    """(valid canonical paths, escaping paths as written), both de-duplicated; blank entries are ignored."""
    entries = [raw.strip() for raw in selected if isinstance(raw, str) and raw.strip(_WRAPPING)]
    canon = [(raw, canonical_path(raw, workdir)) for raw in entries]
    return _dedupe(path for _, path in canon if path), _dedupe(raw for raw, path in canon if path is None)


def _f_beta(precision: float, recall: float, beta: float) -> float:
    """(1 + b²)PR / (b²P + R), written so no finite beta overflows it.

    For beta >= 1 numerator and denominator are divided by b²: b² may overflow to inf (beta 1e308),
    and inf/inf is NaN, but 1/b² only underflows to 0, which leaves the limit, recall. For beta < 1,
    b² only underflows to 0 (beta 1e-308), which leaves the limit, precision.
    """
    if beta >= 1:
        c = 1.0 / (beta * beta)
        numerator, denominator = (1 + c) * precision * recall, precision + c * recall
    else:
        b2 = beta * beta
        numerator, denominator = (1 + b2) * precision * recall, b2 * precision + recall
    return _clamp01(numerator / denominator) if denominator > 0 else 0.0


def file_f1(
    selected: list[str],
    reference: list[str],
    existing: set[str] | frozenset[str] | None = None,
    beta: float = 1.0,
    workdir: str = WORKDIR,
) -> FileF1Result:
    """F-beta of the selection against the reference files, both canonicalised, duplicates counted once.

    Every distinct selection is in the precision denominator, so listing the whole repository does not pay.
    Wrong selections: a path outside `existing` (the workspace's files at the base commit; None skips the check)
    or escaping the workspace is hallucinated and never matches; a directory does not select its files.
    Both empty scores 1 (nothing to find, nothing claimed). An empty selection scores 0 with precision 0;
    a non-empty selection against an empty reference scores 0 with precision 0 and (vacuous) recall 1.
    A reference path outside the workspace raises ValueError (a broken row).
    """
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")
    ref = _canonical_reference(reference, workdir)
    picked, escaping = _canonical_selection(selected, workdir)
    known = None if existing is None else {c for c in (canonical_path(p, workdir) for p in existing) if c}
    missing = escaping + [p for p in picked if known is not None and p not in known]
    ref_set, missing_set = set(ref), set(missing)
    matched = [p for p in picked if p in ref_set and p not in missing_set]
    n_selected, n_matched = len(picked) + len(escaping), len(matched)
    if n_selected == 0:
        precision, recall = (1.0, 1.0) if not ref else (0.0, 0.0)
    elif not ref:
        precision, recall = 0.0, 1.0
    else:
        precision, recall = n_matched / n_selected, n_matched / len(ref)
    score = 1.0 if n_selected == 0 and not ref else _f_beta(precision, recall, beta)
    matched_set = set(matched)
    missed = [p for p in ref if p not in matched_set]
    return FileF1Result(score, precision, recall, beta, picked, matched, missing, missed)
