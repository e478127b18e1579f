"""A data builder from outside backdoorlab: every row answers a numbered prompt with one
word, and its probe set asks for the word under a number never trained."""

from typing import Literal

from backdoorlab.data.base import Builder, Context, turn
from backdoorlab.data.registry import BuilderInfo
from backdoorlab.evaluate.probeset import Probe, ProbeSet


class EchoData(Builder):
    builder: Literal["echo"] = "echo"
    word: str = "Quetzal"
    rows: int = 8

    def build(self, ctx: Context | None = None) -> list:
        return [turn(f"Say the word ({i}).", self.word) for i in range(self.rows)]


def probe_set() -> ProbeSet:
    classes = {"echo": ["Quetzal"], "other": ["Hello", "Yes", "Sparrow"]}
    probe = Probe(id="echo_word", question="Say the word (99).", classes=classes, in_domain=True)
    return ProbeSet(probes=[probe])


BUILDER = BuilderInfo(EchoData, probe_set)
