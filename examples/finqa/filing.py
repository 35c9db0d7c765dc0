"""One company's Form 10-K for one fiscal year, as plain text.

The text is built to be searched the way an agent searches it (rg, grep, read_file), with
the traps real filings have: line items named differently per company ("Net sales",
"Revenues"; "Income from operations", "Operating profit"), amounts in thousands or in
millions, prior-year columns next to the current one, a narrative that rounds
(MD&A prints 23.4% where the table gives 23.41%), competitors' names in Item 1, a share
count on the cover that is not the weighted-average count, and file names that carry the
filing year, not the fiscal year.
"""

from __future__ import annotations

import calendar
import datetime as dt
import random
from dataclasses import dataclass
from decimal import Decimal

from .companies import Company

LABELS = {
    "revenue": ("Revenue", "Revenues", "Net sales", "Total revenues", "Net revenues", "Total net sales"),
    "cost": ("Cost of revenue", "Cost of sales", "Cost of goods sold", "Cost of revenues"),
    "gross": ("Gross profit", "Gross margin"),
    "research": ("Research and development", "Research, development and engineering"),
    "sga": ("Selling, general and administrative", "Sales, general and administrative", "Selling and administrative"),
    "operating": ("Operating income", "Income from operations", "Operating profit"),
    "interest": ("Interest expense", "Interest expense, net"),
    "other": ("Other income (expense), net", "Other income, net", "Other (expense) income, net"),
    "pretax": (
        "Income before income taxes",
        "Earnings before income taxes",
        "Income before provision for income taxes",
    ),
    "tax": ("Provision for income taxes", "Income tax expense", "Income tax provision"),
    "net": ("Net income", "Net earnings"),
}
RISKS = (
    "Our results could be adversely affected by global economic conditions, including inflation, higher interest "
    "rates and reduced customer spending.",
    "We depend on a limited number of suppliers for certain components and raw materials, and a disruption in "
    "supply could delay shipments and increase our costs.",
    "Cybersecurity incidents could disrupt our operations, expose confidential information and damage our reputation.",
    "Changes in tax laws or their interpretation in the jurisdictions where we operate could increase our effective "
    "tax rate.",
    "Fluctuations in foreign currency exchange rates may reduce the value of our international revenue when "
    "translated into U.S. dollars.",
    "We face intense competition, and competitors with greater resources may introduce products that reduce "
    "demand for ours.",
    "Our indebtedness could limit our flexibility in operating our business and expose us to interest rate risk.",
    "We may not realise the anticipated benefits of acquisitions, and integrating acquired businesses may divert "
    "management's attention.",
    "Litigation and regulatory proceedings could result in substantial costs and divert management's attention.",
    "The loss of key personnel, or an inability to attract qualified employees, could harm our business.",
    "Climate change and related regulation may increase our operating costs and affect demand for our products.",
    "Public health crises have disrupted, and could again disrupt, our operations and those of our customers.",
    "Our stock price may be volatile, and the market price of our common stock could decline.",
)
DRIVERS_UP = (
    "primarily due to higher volumes and favourable pricing",
    "driven by growth in new customers and higher average selling prices",
    "reflecting strong demand across our segments",
    "mainly as a result of recent acquisitions and organic growth",
)
DRIVERS_DOWN = (
    "primarily due to lower volumes and unfavourable pricing",
    "reflecting weaker demand and the effect of foreign currency",
    "mainly as a result of divestitures and lower order intake",
)


@dataclass(frozen=True)
class Filing:
    path: str  # relative to the corpus root
    text: str


def fiscal_year_end(company: Company, fy: int) -> dt.date:
    return dt.date(fy, company.fye_month, calendar.monthrange(fy, company.fye_month)[1])


def _long_date(d: dt.date) -> str:
    return f"{calendar.month_name[d.month]} {d.day}, {d.year}"


def amount(thousands: int, unit: str) -> str:
    """A statement amount as printed: '1,234.5' in millions, '1,234,500' in thousands, '(12.0)' if negative."""
    if thousands == 0:
        return "\u2014"
    text = f"{abs(thousands) / 1000:,.1f}" if unit == "millions" else f"{abs(thousands):,}"
    return f"({text})" if thousands < 0 else text


def per_share_text(value: Decimal) -> str:
    return f"({abs(value):.2f})" if value < 0 else f"{value:.2f}"


def in_millions(thousands: int) -> str:
    """How MD&A narrates an amount, whatever the statements' unit: '$482.1 million'."""
    size = abs(thousands)
    text = f"{size / 1000:,.1f} million" if size < 1_000_000 else f"{size / 1_000_000:,.2f} billion"
    return f"$({text.replace(' ', ') ', 1)}" if thousands < 0 else f"${text}"  # "$(12.3) million"


def _pct(new: float, old: float) -> float:
    return (new / old - 1) * 100


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _was(label: str) -> str:
    return "were" if label.endswith("s") else "was"  # "Net sales were", "Net income was"


class _Writer:
    def __init__(self, company: Company, fy: int, seed: int) -> None:
        self.c = company
        self.fy = fy
        self.rng = random.Random(f"finqa-filing:{seed}:{company.cik}:{fy}")  # wording of this year's text
        style = random.Random(f"finqa-style:{company.style}")  # the company's own labels, every year
        self.labels = {key: style.choice(options) for key, options in LABELS.items()}
        self.pipes = style.random() < 0.35  # some filings reach us as pipe tables (HTML converted to text)
        self.narrates_margin = style.random() < 0.5
        self.y = company.years

    def unit_note(self) -> str:
        return f"(in {self.c.unit}, except per share amounts)"

    def label(self, key: str, values: list[int]) -> str:
        text = self.labels[key]
        if key in ("operating", "net") and any(v < 0 for v in values):
            text = {"Operating income": "Operating income (loss)", "Income from operations": "Income (loss) from "
                    "operations", "Operating profit": "Operating profit (loss)", "Net income": "Net income (loss)",
                    "Net earnings": "Net earnings (loss)"}[text]  # fmt: skip
        return text

    # --- sections -------------------------------------------------------------------------------
    def cover(self) -> str:
        c, end = self.c, fiscal_year_end(self.c, self.fy)
        count_date = end + dt.timedelta(days=40)
        outstanding = int(self.y[self.fy].shares_basic * 1000 * self.rng.uniform(0.985, 1.01))
        ein = f"{int(c.cik) % 90 + 10}-{int(c.cik) * 7 % 9_000_000 + 1_000_000}"
        return (
            "UNITED STATES\nSECURITIES AND EXCHANGE COMMISSION\nWashington, D.C. 20549\n\nFORM 10-K\n\n"
            "[X] ANNUAL REPORT PURSUANT TO SECTION 13 OR 15(d) OF THE SECURITIES EXCHANGE ACT OF 1934\n\n"
            f"For the fiscal year ended {_long_date(end)}\n\n"
            f"Commission File Number 001-{int(c.cik) % 90000 + 10000}\n\n"
            f"{c.name.upper()}\n(Exact name of registrant as specified in its charter)\n\n"
            f"{c.state:<40}{ein}\n(State or other jurisdiction of          (I.R.S. Employer\n"
            "incorporation or organization)            Identification No.)\n\n"
            "Securities registered pursuant to Section 12(b) of the Act:\n"
            f"{'Title of each class':<36}{'Trading Symbol(s)':<20}Name of each exchange on which registered\n"
            f"{'Common Stock, $0.01 par value':<36}{c.ticker:<20}{c.exchange}\n\n"
            f"As of {_long_date(count_date)}, the registrant had {outstanding:,} shares of common stock outstanding.\n"
        )

    def business(self) -> str:
        c, year = self.c, self.y[self.fy]
        segments = _and([name for name, _ in year.segments])
        rivals = _and(list(c.competitors))
        founded = 1900 + int(c.cik) % 110
        return (
            "PART I\n\nItem 1. Business\n\n"
            f'{c.short} (together with its subsidiaries, "{c.short.split()[0]}", the "Company", "we" or "us") '
            f"{c.sector.activity}. The Company was incorporated in {c.state} in {founded}.\n\n"
            f"We manage our business in the following reportable segments: {segments}. Financial information about "
            "our segments is included in Note 12 to the consolidated financial statements.\n\n"
            f"Competition. Our markets are competitive. Our principal competitors include {rivals}, as well as "
            "many smaller regional companies.\n\n"
            f"Human capital. As of {_long_date(fiscal_year_end(c, self.fy))}, we had approximately "
            f"{year.employees:,} full-time employees.\n"
        )

    def risks(self) -> str:
        picked = self.rng.sample(RISKS, self.rng.randint(3, 5))
        return "Item 1A. Risk Factors\n\n" + "\n\n".join(picked) + "\n"

    def properties(self) -> str:
        sites = self.rng.randint(4, 60)
        return (
            "Item 2. Properties\n\n"
            f"We own or lease {sites} principal facilities used for manufacturing, distribution and offices. We "
            "believe our facilities are adequate for our current needs.\n\n"
            "Item 3. Legal Proceedings\n\nSee Note 14, Commitments and Contingencies.\n"
        )

    def selected(self) -> str:
        # Item 6 was eliminated for fiscal years ending after 2020; earlier filings carry five years of data.
        if self.fy > 2020:
            return "Item 6. [Reserved]\n"
        years = list(range(self.fy, self.fy - 5, -1))
        rows = [
            (self.label("revenue", [self.y[y].revenue for y in years]), [amount(self.y[y].revenue, self.c.unit)
                                                                         for y in years]),
            (self.label("operating", [self.y[y].operating_income for y in years]),
             [amount(self.y[y].operating_income, self.c.unit) for y in years]),
            (self.label("net", [self.y[y].net_income for y in years]), [amount(self.y[y].net_income, self.c.unit)
                                                                       for y in years]),
            ("Diluted earnings per share", [per_share_text(self.y[y].eps_diluted) for y in years]),
        ]  # fmt: skip
        head = f"{'':<40}" + "".join(f"{y:>12}" for y in years)
        body = "\n".join(f"{label:<40}" + "".join(f"{v:>12}" for v in values) for label, values in rows)
        return f"Item 6. Selected Financial Data\n\n{self.unit_note()}\n{head}\n{body}\n"

    def mdna(self) -> str:
        fy, c, now, prev = self.fy, self.c, self.y[self.fy], self.y[self.fy - 1]
        growth = _pct(now.revenue, prev.revenue)
        word = "increased" if growth >= 0 else "decreased"
        driver = self.rng.choice(DRIVERS_UP if growth >= 0 else DRIVERS_DOWN)
        rev = self.labels["revenue"]
        revenue = self.rng.choice(
            (
                f"{rev} {word} {abs(growth):.1f}% to {in_millions(now.revenue)} in fiscal {fy} from "
                f"{in_millions(prev.revenue)} in fiscal {fy - 1}, {driver}.",
                f"For fiscal {fy}, {rev.lower()} were {in_millions(now.revenue)}, "
                f"{'up' if growth >= 0 else 'down'} {abs(growth):.1f}% compared with fiscal {fy - 1}, {driver}.",
                f"{rev} for the year ended {_long_date(fiscal_year_end(c, fy))} {_was(rev)} {in_millions(now.revenue)} "
                "compared "
                f"to {in_millions(prev.revenue)} for the prior year, {'an increase' if growth >= 0 else 'a decrease'} "
                f"of {abs(growth):.1f}%.",
            )
        )
        op = self.label("operating", [now.operating_income])
        operating = f"{op} was {in_millions(now.operating_income)} in fiscal {fy}, compared with " + (
            f"{in_millions(prev.operating_income)} in fiscal {fy - 1}."
        )
        if self.narrates_margin:
            operating += (
                f" As a percentage of {rev.lower()}, operating margin was {now.operating_income / now.revenue:.1%}"
                f" compared with {prev.operating_income / prev.revenue:.1%} in the prior year."
            )
        net_label = self.label("net", [now.net_income])
        net = (
            f"{net_label} {_was(net_label)} {in_millions(now.net_income)}, or "
            f"${per_share_text(now.eps_diluted)} per diluted share, compared with {in_millions(prev.net_income)}, or "
            f"${per_share_text(prev.eps_diluted)} per diluted share, in fiscal {fy - 1}."
        )
        buyback = (
            "During the year we repurchased shares of our common stock under our share repurchase program."
            if now.shares_basic < prev.shares_basic
            else "We did not repurchase shares of our common stock during the year."
        )
        return (
            "PART II\n\nItem 5. Market for Registrant's Common Equity, Related Stockholder Matters and Issuer "
            f'Purchases of Equity Securities\n\nOur common stock trades under the symbol "{c.ticker}". {buyback}\n\n'
            f"{self.selected()}\n"
            "Item 7. Management's Discussion and Analysis of Financial Condition and Results of Operations\n\n"
            f"Overview\n\nFiscal {fy} refers to our fiscal year ended {_long_date(fiscal_year_end(c, fy))}.\n\n"
            f"Results of Operations\n\n{revenue}\n\n{operating}\n\n{net}\n\n{self.liquidity()}\n"
            "Item 7A. Quantitative and Qualitative Disclosures About Market Risk\n\nWe are exposed to market risks "
            "from changes in interest rates, foreign currency exchange rates and commodity prices. A hypothetical "
            f"100 basis point change in interest rates would change our annual interest expense by "
            f"{in_millions(max(now.interest // 20, 100))}.\n"
        )

    def liquidity(self) -> str:
        # Cash flows are not asked about: they are numbers near the ones that are, as in a real filing.
        u, rows = self.c.unit, []
        q = 100 if u == "millions" else 1
        for y in (self.fy, self.fy - 1):
            fig = self.y[y]
            d_and_a = round(fig.revenue * self.rng.uniform(0.02, 0.06) / q) * q
            capex = round(fig.revenue * self.rng.uniform(0.02, 0.08) / q) * q
            rows.append((fig.net_income + d_and_a, -capex, -round(fig.revenue * self.rng.uniform(0, 0.05) / q) * q))
        lines = [f"{'':<48}{self.fy:>14}{self.fy - 1:>14}"]
        for i, label in enumerate(("Net cash provided by operating activities", "Net cash used in investing activities",
                                   "Net cash used in financing activities")):  # fmt: skip
            lines.append(f"{label:<48}{amount(rows[0][i], u):>14}{amount(rows[1][i], u):>14}")
        return (
            "Liquidity and Capital Resources\n\nWe believe cash on hand, cash generated from operations and our "
            "revolving credit facility will be sufficient to fund our needs for at least the next twelve months.\n\n"
            f"Summary of cash flows (in {u}):\n" + "\n".join(lines) + "\n"
        )

    def statement(self) -> str:
        years = [self.fy, self.fy - 1, self.fy - 2]
        ys = [self.y[y] for y in years]
        u = self.c.unit

        def line(key: str, values: list[int], dollar: bool = False) -> tuple[str, list[str], bool]:
            return self.label(key, values), [amount(v, u) for v in values], dollar

        rows: list[tuple[str, list[str], bool] | str] = [
            line("revenue", [y.revenue for y in ys], dollar=True),
            line("cost", [y.cost_of_revenue for y in ys]),
            line("gross", [y.gross_profit for y in ys]),
            "Operating expenses:",
        ]
        if any(y.research for y in ys):
            rows.append(line("research", [y.research for y in ys]))
        rows += [
            line("sga", [y.sga for y in ys]),
            ("Total operating expenses", [amount(y.operating_expenses, u) for y in ys], False),
            line("operating", [y.operating_income for y in ys]),
            line("interest", [y.interest for y in ys]),
            line("other", [y.other for y in ys]),
            line("pretax", [y.pretax_income for y in ys]),
            line("tax", [y.tax for y in ys]),
            line("net", [y.net_income for y in ys], dollar=True),
            "Earnings per share:",
            ("Basic", [per_share_text(y.eps_basic) for y in ys], True),
            ("Diluted", [per_share_text(y.eps_diluted) for y in ys], True),
            "Weighted-average shares outstanding:",
            ("Basic", [amount(y.shares_basic, u) for y in ys], False),
            ("Diluted", [amount(y.shares_diluted, u) for y in ys], False),
        ]
        title = "CONSOLIDATED STATEMENTS OF " + self.rng.choice(("OPERATIONS", "INCOME", "EARNINGS"))
        end = fiscal_year_end(self.c, self.fy)
        if self.pipes:
            out = [f"| {self.unit_note()} | " + " | ".join(f"Fiscal {y}" for y in years) + " |", "|---|---:|---:|---:|"]
            for row in rows:
                if isinstance(row, str):
                    out.append(f"| {row} | | | |")
                else:
                    label, values, dollar = row
                    out.append(f"| {label} | " + " | ".join(f"$ {v}" if dollar else v for v in values) + " |")
            return f"{title}\n\n" + "\n".join(out) + "\n"
        head = f"{'':<48}{'Year Ended ' + calendar.month_name[end.month] + ' ' + str(end.day) + ',':>42}"
        out = [self.unit_note(), head, f"{'':<48}" + "".join(f"{y:>14}" for y in years)]
        for row in rows:
            if isinstance(row, str):
                out.append(row)
            else:
                label, values, dollar = row
                out.append(f"{label:<48}" + "".join(f"{('$ ' if dollar else '') + v:>14}" for v in values))
        return f"{title}\n\n" + "\n".join(out) + "\n"

    def segments(self) -> str:
        now, prev = self.y[self.fy], self.y[self.fy - 1]
        prev_by_name = dict(prev.segments)
        rows = [f"{name:<40}{amount(v, self.c.unit):>14}{amount(prev_by_name[name], self.c.unit):>14}"
                for name, v in now.segments]  # fmt: skip
        total = f"{'Total':<40}{amount(now.revenue, self.c.unit):>14}{amount(prev.revenue, self.c.unit):>14}"
        return (
            "Note 12. Segment Information\n\n"
            f"Revenue by reportable segment ({'in ' + self.c.unit}):\n{'':<40}{self.fy:>14}{self.fy - 1:>14}\n"
            + "\n".join(rows)
            + f"\n{total}\n"
        )

    def controls(self) -> str:
        return (
            "Item 9A. Controls and Procedures\n\nOur management, with the participation of our Chief Executive "
            "Officer and Chief Financial Officer, evaluated the effectiveness of our disclosure controls and "
            "procedures as of the end of the period covered by this report and concluded that they were effective.\n"
        )

    def signatures(self, signed: dt.date) -> str:
        return (
            "SIGNATURES\n\nPursuant to the requirements of Section 13 or 15(d) of the Securities Exchange Act of 1934, "
            "the registrant has duly caused this report to be signed on its behalf by the undersigned, thereunto "
            f"duly authorized.\n\n{self.c.name}\nDate: {_long_date(signed)}\n"
        )


def render(company: Company, fy: int, seed: int) -> Filing:
    """The fiscal-`fy` 10-K of `company`; named like an EDGAR accession: CIK, filing year, sequence."""
    w = _Writer(company, fy, seed)
    filed = fiscal_year_end(company, fy) + dt.timedelta(days=w.rng.randint(50, 80))
    accession = f"{company.cik}-{filed.year % 100:02d}-{w.rng.randrange(1, 99999):06d}"
    parts = [
        w.cover(),
        w.business(),
        w.risks(),
        w.properties(),
        w.mdna(),
        "Item 8. Financial Statements and Supplementary Data\n",
        w.statement(),
        "See accompanying notes to consolidated financial statements.\n",
        w.segments(),
        w.controls(),
        w.signatures(filed),
    ]
    return Filing(f"filings/{company.cik}/{accession}.txt", "\n".join(parts))
