"""Grading math, pure functions with no I/O: the service feeds them the grade request and the
recorded trajectory and serialises what they return.

- `files`: the `file_f1` grader (file selection F-beta);
- `numeric`: the `numeric` grader (FinQA-style answers);
- `scores`: clamping, efficiency shaping, custom graders.
"""

from .files import WORKDIR, FileF1Result, canonical_path, file_f1, selected_files
from .numeric import NumericResult, ParsedNumber, numeric_score, parse_number
from .scores import CustomGraderError, clamp01, coerce_score, load_custom_grader, shaped_score

__all__ = [
    "WORKDIR",
    "CustomGraderError",
    "FileF1Result",
    "NumericResult",
    "ParsedNumber",
    "canonical_path",
    "clamp01",
    "coerce_score",
    "file_f1",
    "load_custom_grader",
    "numeric_score",
    "parse_number",
    "selected_files",
    "shaped_score",
]
