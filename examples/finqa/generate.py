"""Generate the FinQA example: a corpus of 10-K filings and a dataset of questions over it.

    .venv/bin/python -m examples.finqa.generate workspaces/finqa-corpus

writes, deterministically for a seed (stdlib only):

    OUT/corpus/README.txt                      what the agent sees as /workspace
    OUT/corpus/filings/<CIK>/<accession>.txt   400 companies x fiscal 2017-2023 = 2,800 filings
    OUT/dataset.jsonl                          one Agent RFT row per question (the `item` of its calls)
    OUT/manifest.json                          seed and counts; marks OUT as ours to rewrite

Register OUT/corpus, never OUT, as the environment's workspace: the dataset holds the
reference answers, and an agent that could `cat dataset.jsonl` would be rewarded for it.
Every file gets the same fixed mtime, so regenerating gives the same workspace fingerprint
and the service reuses the image it already prepared instead of building another.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from . import companies, filing, questions

DEFAULT_SEED = 20211231
DEFAULT_COMPANIES = 400
QUESTIONS_PER_COMPANY = 3
FIXED_MTIME = 1_700_000_000  # 2023-11-14: any constant will do; see the module docstring
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Generated:
    corpus: Path  # the workspace directory to register
    dataset: Path
    documents: int
    questions: int
    bytes: int


README = """Annual reports on Form 10-K of {companies} companies, fiscal years 2017 to 2023 ({documents} filings).

filings/<CIK>/<accession number>.txt, one filing per file. The accession number carries the
year the report was filed, which is not always its fiscal year: read the cover page
("For the fiscal year ended ..."). The company's own name and trading symbol are on the
cover; other companies may be named in its text. Amounts are in the unit each statement
states (thousands or millions).
"""


def write(out: Path, seed: int = DEFAULT_SEED, count: int = DEFAULT_COMPANIES) -> Generated:
    """(Re)write the corpus and the dataset under `out`. Raises FileExistsError if `out` holds something else."""
    out = out.resolve()
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise FileExistsError(f"{out} is not empty and was not written by this generator; choose another directory")
    corpus = out / "corpus"
    if corpus.exists():
        shutil.rmtree(corpus)  # a smaller or different corpus must not keep stale filings
    corpus.mkdir(parents=True)
    firms = companies.build(seed, count)
    paths: dict[str, dict[int, str]] = {}
    size = 0
    for c in firms:
        (corpus / "filings" / c.cik).mkdir(parents=True)
        for fy in companies.FILED_YEARS:
            doc = filing.render(c, fy, seed)
            size += _write(corpus / doc.path, doc.text)
            paths.setdefault(c.cik, {})[fy] = doc.path
    documents = sum(len(p) for p in paths.values())
    _write(corpus / "README.txt", README.format(companies=len(firms), documents=f"{documents:,}"))
    rows = questions.dataset(firms, paths, seed, QUESTIONS_PER_COMPANY)
    dataset = out / "dataset.jsonl"
    _write(dataset, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    manifest = {"generator": "examples.finqa.generate", "seed": seed, "companies": len(firms),
                "documents": documents, "questions": len(rows)}  # fmt: skip
    _write(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return Generated(corpus, dataset, documents, len(rows), size)


def _write(path: Path, text: str) -> int:
    data = text.encode()
    path.write_bytes(data)
    os.utime(path, (FIXED_MTIME, FIXED_MTIME))
    return len(data)


def load_dataset(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output directory (corpus/, dataset.jsonl, manifest.json)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--companies", type=int, default=DEFAULT_COMPANIES, help="7 filings each")
    args = parser.parse_args(argv)
    try:
        g = write(args.out, args.seed, args.companies)
    except FileExistsError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{g.documents:,} filings ({g.bytes / 1e6:.1f} MB) in {g.corpus}; {g.questions:,} questions in {g.dataset}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
