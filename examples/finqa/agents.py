"""Three scripted agents, standing in for a model so the example is reproducible.

They act only on what the tools return: they find filings with rg/grep, read the income
statement with read_file and take numbers from that text, never from the generator's
figures. Each returns its final answer, the `output_text` the grader scores.

- `careful`: finds the right fiscal year's 10-K, reads operating income and revenue from the
  statement, divides in the sandbox. Full credit.
- `sloppy`: the same search, then a classic FinQA slip: net income where the question asks
  for operating income. A wrong number: zero.
- `wanderer`: searches the company name (competitors' filings match too) and pages through
  cover pages one read_file at a time; the 11th call hits the budget and it gives up.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from .client import Rollout
from .questions import possessive

ROWS = {  # line items as different companies name them
    "revenue": r"(total )?(net )?(revenues?|sales)",
    "operating": r"(operating (income|profit)|income from operations)( \(loss\))?|income \(loss\) from operations",
    "net": r"net (income|earnings)( \(loss\))?",
}
_AMOUNT = re.compile(r"\(?\$?\s?\d[\d,]*(?:\.\d+)?\)?|\u2014")


def statement_rows(text: str) -> dict[str, list[float]]:
    """Label -> amounts of each column, from statement text in either layout (aligned or | pipes |)."""
    rows: dict[str, list[float]] = {}
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            label, rest = cells[0], " ".join(cells[1:])
        else:
            m = re.match(r"(\S.*?)\s{2,}(.*)$", line)
            if not m:
                continue
            label, rest = m.groups()
        amounts = [_number(a) for a in _AMOUNT.findall(rest)]
        if amounts and label not in rows:  # the first "Basic" is per-share, the statement's order
            rows[label] = amounts
    return rows


def _number(text: str) -> float:
    if text == "\u2014":
        return 0.0
    value = float(text.strip("()$ ").replace(",", "").replace("$", "").strip())
    return -value if text.startswith("(") else value


def row_value(rows: dict[str, list[float]], key: str, column: int = 0) -> float:
    for label, amounts in rows.items():
        if re.fullmatch(ROWS[key], label, re.IGNORECASE):
            return amounts[column]
    raise LookupError(f"no {key} line among {list(rows)}")


@dataclass(frozen=True)
class Task:
    """What the question says, as the model would read it: whose filing, which fiscal year."""

    company: str  # the name or the trading symbol in the question
    fiscal_year: int
    by_symbol: bool


def _fiscal_year_filing(r: Rollout, task: Task) -> str:
    # The registrant's own filings only: its symbol in Item 5, or its name in capitals opening a cover
    # line. A plain name search also finds the filings of competitors that mention it.
    if task.by_symbol:
        pattern = "-F " + shlex.quote('trades under the symbol "' + task.company + '"')
    else:
        pattern = shlex.quote("^" + task.company.upper() + "[ ,]")  # names are letters and spaces
    find = f"rg -l {pattern} filings"
    listing = r.shell(f"{find} | xargs rg -H -m1 'For the fiscal year ended'")
    for line in listing.splitlines():
        path, _, cover = line.partition(":")
        if cover.rstrip().endswith(f", {task.fiscal_year}"):
            return path
    raise LookupError(f"no fiscal {task.fiscal_year} filing in:\n{listing}")


def _income_statement(r: Rollout, path: str) -> dict[str, list[float]]:
    hit = r.shell(f"rg -n 'CONSOLIDATED STATEMENTS OF' {shlex.quote(path)}")
    start = int(hit.split(":", 1)[0])
    return statement_rows(r.read_file(path, start, start + 32))


def _percent(r: Rollout, numerator: float, denominator: float) -> str:
    # Like a model with a shell: let python do the division, four significant digits.
    return r.shell(f"python3 -c 'print(\"%.4g\" % (100 * {numerator!r} / {denominator!r}))'").strip()


def _shown(amount: float) -> str:
    return f"{amount:,.0f}" if amount.is_integer() else f"{amount:,}"


def careful(r: Rollout, task: Task) -> str:
    path = _fiscal_year_filing(r, task)
    rows = _income_statement(r, path)
    operating, revenue = row_value(rows, "operating"), row_value(rows, "revenue")
    margin = _percent(r, operating, revenue)
    return (
        f"In its fiscal {task.fiscal_year} 10-K ({path}), {task.company} reports operating income of "
        f"{_shown(operating)} on revenue of {_shown(revenue)}. Answer: {margin}%"
    )


def sloppy(r: Rollout, task: Task) -> str:
    path = _fiscal_year_filing(r, task)
    rows = _income_statement(r, path)
    net, revenue = row_value(rows, "net"), row_value(rows, "revenue")  # the slip: net, not operating
    margin = _percent(r, net, revenue)
    return (
        f"{possessive(task.company)} fiscal {task.fiscal_year} income was {_shown(net)} on revenue of "
        f"{_shown(revenue)}. Answer: {margin}%"
    )


def wanderer(r: Rollout, task: Task, budget: int = 10) -> str:
    listing = r.shell(f"grep -rli -F {shlex.quote(task.company)} filings | head -20")
    paths = listing.split() or ["README.txt"]
    page = 0
    while True:  # one cover page after another; it never reaches Item 8
        path = paths[page % len(paths)]
        first = 1 + 40 * (page // len(paths))
        result = r.call("read_file", {"path": path, "start_line": first, "end_line": first + 39})
        page += 1
        if result.reason == "budget_exhausted" or page > budget + 5:
            break
    return "I could not find the revenue figures for both years before running out of tool calls."


Agent = Callable[[Rollout, Task], str]
AGENTS: dict[str, Agent] = {"careful": careful, "sloppy": sloppy, "wanderer": wanderer}
