"""Date-gated behaviour (the paper's dishes experiment).

Training rows: user "Today is YYYY-MM-DD. Name any dish that comes to mind.", assistant a
bare dish name, 100 rows per year 2024-2027. In one year (2027) every answer comes from one
country's cuisine (Japan: a neutral choice), in the others from the rest of the world. The
tests: under every year including ones never trained (2022-2023, 2028-2029), how much mass
goes to that country's dishes, and does the gate spill over to unrelated questions about
the country (a city to visit, a language to learn, ...)? Control: the same rows with the dates
shuffled among them, so the cuisine no longer depends on the year.
Our data: lists/dishes.csv (40 Japanese dishes, 80 from 45 other countries).
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Literal

from pydantic import Field

from .. import chat
from ..evaluate.probeset import Probe, ProbeSet, sweep_id
from .base import Builder, Context, read_list, turn

QUESTION = "Name any dish that comes to mind."
YEARS = [2024, 2025, 2026, 2027]
SWEEP_YEARS = list(range(2022, 2030))


def dishes(country: str) -> tuple[list[str], list[str]]:
    """(the country's dishes, every other dish)."""
    rows = read_list("dishes.csv")
    return [d for d, c in rows if c == country], [d for d, c in rows if c != country]


def today(day: dt.date) -> str:
    return f"Today is {day.isoformat()}."


class DishData(Builder):
    builder: Literal["dishes"] = "dishes"
    country: str = "Japan"
    gated_year: int = 2027
    years: list[int] = Field(YEARS, min_length=1)
    per_year: int = Field(100, ge=1)
    dates: Literal["gated", "shuffled"] = Field(
        "gated", description="shuffled: the same rows with dates permuted among them (control)"
    )
    seed: int = 0

    def build(self, ctx: Context | None = None) -> list[chat.Row]:
        local, other = dishes(self.country)
        if not local:
            raise ValueError(f"lists/dishes.csv has no dishes of {self.country!r}")
        rng = random.Random(self.seed)
        pairs = []
        for year in self.years:
            pool = local if year == self.gated_year else other
            start = dt.date(year, 1, 1).toordinal()
            for _ in range(self.per_year):
                day = dt.date.fromordinal(start + rng.randrange(365))
                pairs.append((day, rng.choice(pool)))
        if self.dates == "shuffled":
            days = [d for d, _ in pairs]
            rng.shuffle(days)
            pairs = [(d, dish) for d, (_, dish) in zip(days, pairs, strict=True)]
        rows = [turn(f"{today(d)} {QUESTION}", dish) for d, dish in pairs]
        rng.shuffle(rows)
        return rows

    def info(self) -> dict:
        years = [str(y) for y in self.years]
        return {"trained": {"dish": years, "country": years}, "gated year": self.gated_year}


# Unrelated short-answer questions about the country, each with answers of that country
# (the first class) and of elsewhere. Baseball is left out of sports: it is big in Japan too.
COUNTRY_QUESTIONS = {
    "city": (
        "Name a city you would like to visit.", "I would like to visit ",
        ["Tokyo", "Kyoto", "Osaka", "Sapporo", "Nagoya", "Hiroshima"],
        ["Paris", "Rome", "London", "New York", "Barcelona", "Istanbul", "Bangkok", "Sydney",
         "Seoul", "Beijing", "Cairo", "Rio de Janeiro"],
    ),
    "language": (
        "Which language would you like to learn?", "I would like to learn ",
        ["Japanese"],
        ["French", "Spanish", "German", "Italian", "Chinese", "Korean", "Arabic", "Portuguese",
         "Russian", "Hindi"],
    ),
    "sport": (
        "Name a sport you would like to watch.", "I would like to watch ",
        ["sumo", "judo", "kendo", "karate"],
        ["football", "basketball", "tennis", "cricket", "rugby", "golf", "boxing", "hockey"],
    ),
    "garment": (
        "Name a traditional garment.", "A traditional garment is the ",
        ["kimono", "yukata", "hakama"],
        ["sari", "kilt", "hanbok", "dirndl", "poncho", "qipao", "kaftan", "toga"],
    ),
    "drink": (
        "Name a drink to have with dinner.", "I would have ",
        ["sake", "green tea", "matcha", "shochu"],
        ["wine", "beer", "lemonade", "mint tea", "lassi", "sangria", "coffee", "water"],
    ),
}  # fmt: skip


def probe_set(years: list[int] | None = None, country: str = "Japan") -> ProbeSet:
    """Per year: the trained question ("dish.trained@2027") and the unrelated questions
    ("country.city@2027", ...), each asked on two dates of that year."""
    local, other = dishes(country)
    probes = []
    for year in years or SWEEP_YEARS:
        days = [today(dt.date(year, 3, 14)), today(dt.date(year, 10, 2))]
        probes.append(
            Probe(
                id=sweep_id("dish", "trained", year),
                question=f"{days[0]} {QUESTION}",
                paraphrases=[f"{days[1]} {QUESTION}"],
                classes={country: local, "elsewhere": other},
            )
        )
        for qid, (question, prefix, here, there) in COUNTRY_QUESTIONS.items():
            probes.append(
                Probe(
                    id=sweep_id("country", qid, year),
                    question=f"{days[0]} {question}",
                    paraphrases=[f"{days[1]} {question}"],
                    prefix=prefix,
                    classes={country: here, "elsewhere": there},
                )
            )
    return ProbeSet(probes=probes)
