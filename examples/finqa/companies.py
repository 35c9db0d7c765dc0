"""Invented companies and their yearly figures, the ground truth of the FinQA corpus.

Every amount is an integer number of thousands (dollars or shares), and companies that
report in millions get multiples of 100, so the figures a filing prints are exactly the
figures the reference answers are computed from: a reference never rests on a hidden
decimal the agent cannot see. Derived lines (gross profit, operating income, net income)
are sums of printed lines, as in a real income statement.

Stdlib only, and every draw comes from a `random.Random` seeded with a string (hashed with
SHA-512 by the random module), never from `hash()`, so a seed gives the same corpus in any
process.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal

FIRST_YEAR, LAST_YEAR = 2013, 2023  # figures; filings cover fiscal 2017-2023 and look back up to 4 years
FILED_YEARS = tuple(range(2017, LAST_YEAR + 1))


@dataclass(frozen=True)
class Sector:
    key: str
    cores: tuple[str, ...]  # second word of company names in this sector
    gross_margin: tuple[float, float]
    research: tuple[float, float]  # share of revenue; (0, 0): the sector reports no R&D line
    sga: tuple[float, float]
    segments: tuple[str, ...]
    activity: str  # "we design and sell ..." of Item 1


SECTORS = (
    Sector("technology", ("Systems", "Technologies", "Software", "Networks", "Semiconductor", "Digital"),
           (0.52, 0.74), (0.11, 0.21), (0.18, 0.30),
           ("Cloud Services", "Enterprise Software", "Hardware", "Professional Services"),
           "develops and sells software, cloud services and networking equipment to businesses"),
    Sector("consumer", ("Foods", "Brands", "Beverages", "Apparel", "Home"),
           (0.28, 0.46), (0.0, 0.0), (0.17, 0.28),
           ("North America", "International", "Direct-to-Consumer", "Wholesale"),
           "manufactures and markets branded consumer products sold through retailers and online"),
    Sector("industrial", ("Industries", "Manufacturing", "Materials", "Machinery", "Components"),
           (0.21, 0.35), (0.015, 0.04), (0.09, 0.15),
           ("Engineered Products", "Flow Control", "Aftermarket Services", "Specialty Materials"),
           "designs and manufactures engineered components, machinery and specialty materials"),
    Sector("health", ("Pharmaceuticals", "Therapeutics", "Medical", "Health", "Biosciences"),
           (0.58, 0.80), (0.09, 0.24), (0.22, 0.34),
           ("Pharmaceuticals", "Medical Devices", "Diagnostics", "Consumer Health"),
           "discovers, develops and commercialises medicines and medical devices"),
    Sector("energy", ("Energy", "Resources", "Petroleum", "Power", "Renewables"),
           (0.14, 0.34), (0.0, 0.0), (0.04, 0.10),
           ("Upstream", "Midstream", "Power Generation", "Renewable Energy"),
           "produces and transports oil, natural gas and electricity"),
    Sector("logistics", ("Logistics", "Freight", "Transport", "Shipping"),
           (0.12, 0.26), (0.0, 0.0), (0.05, 0.12),
           ("Truckload", "Intermodal", "Freight Brokerage", "Warehousing"),
           "provides freight transportation, brokerage and warehousing services"),
    Sector("retail", ("Stores", "Outfitters", "Markets", "Retail"),
           (0.24, 0.40), (0.0, 0.0), (0.17, 0.29),
           ("Stores", "E-commerce", "Wholesale Club", "Franchise"),
           "operates retail stores and e-commerce sites selling general merchandise"),
)  # fmt: skip

PREFIXES = (
    "Acme", "Apex", "Summit", "Northwind", "Blue Harbor", "Granite", "Meridian", "Cascade", "Pioneer", "Redwood",
    "Silverline", "Keystone", "Beacon", "Atlas", "Orion", "Vertex", "Sterling", "Crescent", "Evergreen", "Frontier",
    "Ironwood", "Lakeshore", "Liberty", "Magnolia", "Nova", "Pacifica", "Quantum", "Riverbend", "Sentinel",
    "Tidewater", "Vanguard", "Westbrook", "Zenith", "Aurora", "Bluestone", "Cobalt", "Driftwood", "Elmstead",
    "Foxhollow", "Goldcrest", "Highland", "Ironclad", "Juniper", "Kingsbridge", "Lodestar", "Marlin", "Northgate",
    "Oakmont", "Pinnacle", "Quarry", "Ridgeline", "Saltmarsh", "Tamarack", "Upland", "Valor", "Willowbrook",
    "Yellowstone", "Arbor", "Brightwater", "Copperfield", "Delta Ridge", "Eastfield", "Falcon", "Greystone",
)  # fmt: skip
SUFFIXES = ("Inc.", "Corporation", "Holdings, Inc.", "Co.", "Group, Inc.", "Corp.", "Incorporated")
STATES = ("Delaware", "Delaware", "Delaware", "Nevada", "Ohio", "Texas", "New York", "Maryland", "Washington")
EXCHANGES = ("The Nasdaq Stock Market LLC", "New York Stock Exchange", "The Nasdaq Global Select Market")
FYE_MONTHS = (12, 12, 12, 12, 12, 9, 6, 3)  # most companies close their year in December


@dataclass(frozen=True)
class Year:
    """One fiscal year of a company: thousands of dollars, thousands of shares."""

    revenue: int
    cost_of_revenue: int
    research: int
    sga: int
    interest: int
    other: int  # other income (expense), net; negative is an expense
    tax: int  # negative is a benefit
    shares_basic: int
    shares_diluted: int
    segments: tuple[tuple[str, int], ...]
    employees: int

    @property
    def gross_profit(self) -> int:
        return self.revenue - self.cost_of_revenue

    @property
    def operating_expenses(self) -> int:
        return self.research + self.sga

    @property
    def operating_income(self) -> int:
        return self.gross_profit - self.operating_expenses

    @property
    def pretax_income(self) -> int:
        return self.operating_income - self.interest + self.other

    @property
    def net_income(self) -> int:
        return self.pretax_income - self.tax

    @property
    def eps_basic(self) -> Decimal:
        return per_share(self.net_income, self.shares_basic)

    @property
    def eps_diluted(self) -> Decimal:
        return per_share(self.net_income, self.shares_diluted)


def per_share(amount: int, shares: int) -> Decimal:
    """Earnings per share as filings print it: rounded half-up to the cent."""
    return (Decimal(amount) / Decimal(shares)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Company:
    name: str  # "Acme Industries, Inc."
    short: str  # "Acme Industries": how questions and competitors' filings name it
    ticker: str
    cik: str  # ten digits, as EDGAR writes it
    sector: Sector
    state: str
    exchange: str
    fye_month: int
    unit: str  # "millions" or "thousands": how its statements print amounts
    style: int  # picks the wording and layout of its filings, stable across its years
    years: dict[int, Year]
    competitors: tuple[str, ...] = ()


def _names(rng: random.Random, count: int) -> list[tuple[str, Sector]]:
    # Acme Industries first: the seed talk's question is about ACME. Shared prefixes across sectors
    # ("Acme Industries", "Acme Software") make a bare name search return the wrong company too.
    combos = [(p, s, c) for p in PREFIXES for s in SECTORS for c in s.cores]
    rng.shuffle(combos)
    combos.insert(0, ("Acme", SECTORS[2], "Industries"))
    names: list[tuple[str, Sector]] = []
    seen: set[str] = set()
    for prefix, sector, core in combos:
        short = f"{prefix} {core}"
        if short not in seen:
            seen.add(short)
            names.append((short, sector))
        if len(names) == count:
            return names
    raise ValueError(f"at most {len(names)} distinct company names")


def _ticker(rng: random.Random, short: str, taken: set[str]) -> str:
    words = short.upper().replace("-", " ").split()
    candidates = [words[0][:4], words[0][:2] + words[-1][:2], words[0][0] + words[-1][:3], words[0][:3] + words[-1][0]]
    for t in candidates:
        if t.isalpha() and t not in taken:
            return t
    while True:
        t = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.choice((3, 4))))
        if t not in taken:
            return t


def _years(rng: random.Random, sector: Sector, unit: str) -> dict[int, Year]:
    q = 100 if unit == "millions" else 1  # millions print one decimal: whole hundreds of thousands

    def r(x: float) -> int:
        return int(round(x / q)) * q

    revenue = rng.uniform(600_000, 40_000_000) if unit == "millions" else rng.uniform(40_000, 900_000)
    trend = rng.uniform(-0.02, 0.12)
    gm = rng.uniform(*sector.gross_margin)
    rd = rng.uniform(*sector.research)
    sga = rng.uniform(*sector.sga)
    debt_ratio = rng.uniform(0.0, 0.5)
    shares = rng.uniform(revenue / 60, revenue / 8)  # thousands of shares
    dilution = rng.uniform(0.006, 0.03)
    employees = revenue / rng.uniform(120, 500)
    split = [rng.uniform(1, 3) for _ in range(rng.choice((2, 3)))]
    segment_names = rng.sample(sector.segments, len(split))
    years: dict[int, Year] = {}
    for fy in range(FIRST_YEAR, LAST_YEAR + 1):
        growth = rng.gauss(trend, 0.07)
        if abs(growth) < 0.012:  # growth questions need a rate a 4-digit answer can hit
            growth = 0.012 if growth >= 0 else -0.012
        revenue *= 1 + growth
        gm = min(max(gm + rng.gauss(0, 0.012), sector.gross_margin[0] - 0.04), sector.gross_margin[1] + 0.03)
        rd = max(rd + rng.gauss(0, 0.004), 0.0) if sector.research[1] else 0.0
        sga = min(max(sga + rng.gauss(0, 0.01), sector.sga[0] - 0.03), sector.sga[1] + 0.05)
        rev = r(revenue)
        cost = r(rev * (1 - gm))
        research = r(rev * rd)
        opex_sga = r(rev * sga)
        interest = r(rev * debt_ratio * rng.uniform(0.03, 0.06))
        other = r(rev * rng.gauss(0.002, 0.004))
        operating = rev - cost - research - opex_sga
        pretax = operating - interest + other
        tax = r(pretax * rng.uniform(0.13, 0.27)) if pretax > 0 else r(pretax * rng.uniform(0.02, 0.12))
        shares *= 1 + rng.uniform(-0.035, 0.035)
        basic = r(shares)
        diluted = r(shares * (1 + dilution)) if pretax - tax > 0 else basic  # no anti-dilution in a loss year
        weights = [w * rng.uniform(0.9, 1.1) for w in split]
        parts = [r(rev * w / sum(weights)) for w in weights[:-1]]
        segments = tuple(zip(segment_names, [*parts, rev - sum(parts)], strict=True))
        employees *= 1 + growth * rng.uniform(0.3, 0.9)
        years[fy] = Year(rev, cost, research, opex_sga, interest, other, tax, basic, diluted, segments,
                         int(round(employees, -2)) or 100)  # fmt: skip
    return years


def build(seed: int, count: int) -> list[Company]:
    """`count` companies with figures for fiscal FIRST_YEAR..LAST_YEAR, the same for the same seed."""
    rng = random.Random(f"finqa-companies:{seed}")
    names = _names(rng, count)
    tickers: set[str] = set()
    ciks: set[int] = set()
    companies = []
    for i, (short, sector) in enumerate(names):
        ticker = "ACME" if i == 0 else _ticker(rng, short, tickers | {"ACME"})
        tickers.add(ticker)
        cik = rng.randrange(1_000_000, 1_999_999)
        while cik in ciks:
            cik += 1
        ciks.add(cik)
        unit = "millions" if rng.random() < 0.6 else "thousands"
        suffix = "Inc." if i == 0 else rng.choice(SUFFIXES)
        name = f"{short}, Inc." if suffix == "Inc." else f"{short} {suffix}"
        companies.append(
            Company(
                name=name,
                short=short,
                ticker=ticker,
                cik=f"{cik:010d}",
                sector=sector,
                state=rng.choice(STATES),
                exchange=rng.choice(EXCHANGES),
                fye_month=12 if i == 0 else rng.choice(FYE_MONTHS),
                unit=unit,
                style=rng.randrange(1 << 16),
                years=_years(rng, sector, unit),
            )
        )
    # Competitors are named in Item 1: a name search also finds other companies' filings.
    by_sector: dict[str, list[Company]] = {}
    for c in companies:
        by_sector.setdefault(c.sector.key, []).append(c)
    out = []
    for c in companies:
        peers = [p.short for p in by_sector[c.sector.key] if p is not c]
        picked = tuple(rng.sample(peers, min(3, len(peers))))
        out.append(replace(c, competitors=picked))
    return out
