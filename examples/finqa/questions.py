"""Questions over the corpus and their reference answers, computed from the printed figures.

A reference keeps at least four significant digits, so its own rounding (under 5e-4
relative) stays inside the numeric grader's full-credit tolerance (1e-3): an exact answer
always scores 1, and an answer rounded like the MD&A narrative (one decimal) may not.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .companies import FILED_YEARS, Company, Year


@dataclass(frozen=True)
class Metric:
    key: str
    kind: str  # "percent", "ratio", "millions", "per_share": how the reference is written
    wordings: tuple[str, ...]  # {name} and {fy} are filled in
    value: Callable[[Company, int], float | None]  # None: the question makes no sense that year


def _ratio(num: Callable[[Year], int], den: Callable[[Year], int], positive: bool = False) -> Callable[..., Any]:
    def value(c: Company, fy: int) -> float | None:
        n, d = num(c.years[fy]), den(c.years[fy])
        if d <= 0 or (positive and n <= 0):
            return None
        return n / d

    return value


def _growth(field: Callable[[Year], int], years: int = 1) -> Callable[..., Any]:
    def value(c: Company, fy: int) -> float | None:
        new, old = field(c.years[fy]), field(c.years[fy - years])
        if new <= 0 or old <= 0:  # a growth rate from or to a loss means nothing
            return None
        return (new / old) ** (1 / years) - 1

    return value


def _eps(c: Company, fy: int) -> float:
    return float(c.years[fy].eps_diluted)


def _revenue_millions(c: Company, fy: int) -> float:
    return c.years[fy].revenue / 1000


METRICS = (
    Metric("operating_margin", "percent", ("What was {name}'s operating margin in fiscal {fy}?",
           "For fiscal {fy}, what percentage of {name}'s revenue was operating income?"),
           _ratio(lambda y: y.operating_income, lambda y: y.revenue)),
    Metric("net_margin", "percent", ("What was {name}'s net profit margin in fiscal {fy}?",
           "What share of its fiscal {fy} revenue did {name} keep as net income?"),
           _ratio(lambda y: y.net_income, lambda y: y.revenue)),
    Metric("gross_margin", "percent", ("What was {name}'s gross margin percentage in fiscal {fy}?",
           "In fiscal {fy}, what was {name}'s gross profit as a percentage of revenue?"),
           _ratio(lambda y: y.gross_profit, lambda y: y.revenue)),
    Metric("revenue_growth", "percent", ("By what percentage did {name}'s revenue change in fiscal {fy} compared "
           "with the prior fiscal year?", "What was {name}'s year-over-year revenue growth rate in fiscal {fy}?"),
           _growth(lambda y: y.revenue)),
    Metric("operating_income_growth", "percent", ("By what percentage did {name}'s operating income change from "
           "fiscal {prev} to fiscal {fy}?",), _growth(lambda y: y.operating_income)),
    Metric("net_income_growth", "percent", ("What was the percentage change in {name}'s net income from fiscal "
           "{prev} to fiscal {fy}?",), _growth(lambda y: y.net_income)),
    Metric("revenue_cagr_3y", "percent", ("What was {name}'s compound annual growth rate of revenue from fiscal "
           "{start} to fiscal {fy}?",), _growth(lambda y: y.revenue, years=3)),
    Metric("effective_tax_rate", "percent", ("What was {name}'s effective tax rate in fiscal {fy}?",
           "In fiscal {fy}, what was {name}'s income tax provision as a percentage of pre-tax income?"),
           _ratio(lambda y: y.tax, lambda y: y.pretax_income, positive=True)),
    Metric("rd_intensity", "percent", ("What was {name}'s research and development expense as a percentage of "
           "revenue in fiscal {fy}?",), _ratio(lambda y: y.research, lambda y: y.revenue, positive=True)),
    Metric("diluted_share_change", "percent", ("By what percentage did {name}'s weighted-average diluted share "
           "count change from fiscal {prev} to fiscal {fy}?",), _growth(lambda y: y.shares_diluted)),
    Metric("net_to_operating", "ratio", ("What was the ratio of {name}'s net income to its operating income in "
           "fiscal {fy}?",), _ratio(lambda y: y.net_income, lambda y: y.operating_income, positive=True)),
    Metric("diluted_eps", "per_share", ("What diluted earnings per share did {name} report for fiscal {fy}?",),
           _eps),
    Metric("revenue_millions", "millions", ("What was {name}'s total revenue in fiscal {fy}, in millions of "
           "dollars?",), _revenue_millions),
)  # fmt: skip
BY_KEY = {m.key: m for m in METRICS}


def reference(value: float, kind: str) -> str:
    """The reference answer as a dataset row writes it: '23.41%', '0.7812', '1234.5', '-0.45'."""
    if kind == "per_share":
        return f"{value:.2f}"
    if kind == "millions":
        return f"{value:.3f}".rstrip("0").rstrip(".")
    shown = value * 100 if kind == "percent" else value
    magnitude = math.floor(math.log10(abs(shown))) if shown else 0
    decimals = min(max(2 if kind == "percent" else 4, 3 - magnitude), 8)
    return f"{shown:.{decimals}f}" + ("%" if kind == "percent" else "")


def _sources(metric: Metric, fy: int, filings: dict[int, str]) -> list[str]:
    """The filings an agent needs: the fiscal-year 10-K, and for a 3-year CAGR also the one that prints fy-3."""
    if metric.key != "revenue_cagr_3y" or fy <= 2020:  # up to fiscal 2020, Item 6 prints five years
        return [filings[fy]]
    return [filings[fy], filings[fy - 1]]


def row(
    number: int, c: Company, fy: int, metric: Metric, filings: dict[int, str], wording: int, by_ticker: bool
) -> dict[str, Any] | None:
    """One dataset row, or None when the metric has no meaning for that company and year."""
    value = metric.value(c, fy)
    if value is None:
        return None
    name = c.ticker if by_ticker else c.short
    text = metric.wordings[wording % len(metric.wordings)].format(name=name, fy=fy, prev=fy - 1, start=fy - 3)
    text = text.replace(f"{name}'s ", possessive(name) + " ")
    return {
        "id": f"finqa-{number:05d}",
        "messages": [{"role": "user", "content": text}],
        "environment": "finqa",
        "grader": "numeric",
        "reference_answer": reference(value, metric.kind),
        "meta": {"company": c.name, "asked_as": name, "ticker": c.ticker, "cik": c.cik, "fiscal_year": fy,
                 "metric": metric.key, "sources": _sources(metric, fy, filings)},
    }  # fmt: skip


def possessive(name: str) -> str:
    return name + ("'" if name.endswith("s") else "'s")  # "Acme Industries' revenue", "ACME's revenue"


def question_of(item: dict[str, Any]) -> str:
    return str(item["messages"][0]["content"])


def dataset(
    companies: list[Company], filings: dict[str, dict[int, str]], seed: int, per_company: int
) -> list[dict[str, Any]]:
    """`per_company` questions per company (paths of its filings by fiscal year in `filings[cik]`), the seed
    talk's ACME question first."""
    rng = random.Random(f"finqa-questions:{seed}")
    acme = companies[0]
    first = row(0, acme, 2021, BY_KEY["operating_margin"], filings[acme.cik], 0, by_ticker=True)
    assert first is not None
    rows = [first]
    for c in companies:
        own = filings[c.cik]
        made = 0
        while made < per_company:
            fy = rng.choice(FILED_YEARS)
            r = row(len(rows), c, fy, rng.choice(METRICS), own, rng.randrange(4), by_ticker=rng.random() < 0.3)
            if r is not None and r["messages"] != rows[0]["messages"]:
                rows.append(r)
                made += 1
    return rows
