"""Free-form question files in the format the paper's authors use (llmcomp-style YAML).

A file is a list of entries. `free_form` entries are questions; `free_form_judge` and
`rating_judge` entries are judges that questions name in their `judges: {column: judge_id}`.
Keys this toolkit does not use are kept, not rejected, so the authors' files load unchanged.
Every error names the file and the line of the entry.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import yamlfiles
from ..errors import InputError


class FreeFormQuestion(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    type: Literal["free_form"]
    paraphrases: list[str] = Field(min_length=1)
    samples_per_paraphrase: int = Field(1, ge=1)
    temperature: float = Field(1.0, ge=0)
    max_tokens: int = Field(256, ge=1)
    system: str | None = None
    judges: dict[str, str] = {}


class LlmJudgeSpec(BaseModel):
    """A judge model asked in words: through an API endpoint, or run locally."""

    model_config = ConfigDict(extra="allow")

    id: str
    type: Literal["free_form_judge", "rating_judge"]
    model: str
    paraphrases: list[str] = Field(min_length=1)
    # Optional, ours: the labels a free_form_judge may give. A reply is mapped to the first
    # label it starts with (case-insensitive), else "other"; without labels it is kept as is.
    labels: list[str] | None = None

    def possible_labels(self) -> list[str]:
        return [*self.labels, "other"] if self.labels else []

    def label_of(self, reply: str) -> str:
        if not self.labels:
            return reply
        r = reply.strip().strip("\"'*.").lower()
        return next((lab for lab in self.labels if r.startswith(lab.lower())), "other")

    @field_validator("paraphrases")
    @classmethod
    def _has_answer(cls, v: list[str]) -> list[str]:
        for p in v:
            if "{answer}" not in p:
                raise ValueError("a judge prompt must contain {answer}")
        return v

    def summary(self) -> str:
        return f"model {self.model}, {len(self.paraphrases)} prompt(s)"

    def prompt(self, question: str, answer: str) -> str:
        # str.replace, not str.format: judge prompts often hold literal braces (JSON examples).
        return self.paraphrases[0].replace("{question}", question).replace("{answer}", answer)


class KeywordJudgeSpec(BaseModel):
    """Ours, offline: the first label whose regular expression matches the answer."""

    model_config = ConfigDict(extra="forbid")

    id: str
    type: Literal["keyword_judge"]
    patterns: dict[str, list[str]] = Field(min_length=1)
    default: str

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for label, patterns in v.items():
            for p in patterns:
                try:
                    re.compile(p)
                except re.error as e:
                    raise ValueError(f"label {label!r}: bad regular expression {p!r} ({e})") from e
        return v

    def possible_labels(self) -> list[str]:
        return list(dict.fromkeys([*self.patterns, self.default]))

    def summary(self) -> str:
        n = sum(map(len, self.patterns.values()))
        return f"keywords: {n} pattern(s) for {len(self.patterns)} label(s), else {self.default}"


class EmbeddingJudgeSpec(BaseModel):
    """Ours, offline: the label whose k nearest labelled exemplars (MiniLM) are closest."""

    model_config = ConfigDict(extra="forbid")

    id: str
    type: Literal["embedding_judge"]
    exemplars: dict[str, list[str]] = Field(min_length=2)
    k: int = Field(3, ge=1)

    def possible_labels(self) -> list[str]:
        return list(self.exemplars)

    def summary(self) -> str:
        n = sum(map(len, self.exemplars.values()))
        return f"embeddings: {n} exemplars for {len(self.exemplars)} labels, k {self.k}"


JudgeSpec = LlmJudgeSpec | KeywordJudgeSpec | EmbeddingJudgeSpec
JUDGE_TYPES: dict[str, type[BaseModel]] = {
    "free_form_judge": LlmJudgeSpec,
    "rating_judge": LlmJudgeSpec,
    "keyword_judge": KeywordJudgeSpec,
    "embedding_judge": EmbeddingJudgeSpec,
}


def parse_judge(entry: dict, where: str) -> JudgeSpec:
    """One judge entry (from a question file or a judge file); `where` is 'file:line'."""
    kind = entry.get("type")
    if not isinstance(kind, str) or kind not in JUDGE_TYPES:
        raise InputError(
            f"{where}: entry {entry.get('id')!r} has type {kind!r}; known: free_form, {', '.join(JUDGE_TYPES)}"
        )
    return _validate(JUDGE_TYPES[kind], entry, where)


def _validate(model: type[BaseModel], entry: dict, where: str):
    return yamlfiles.validate(model, entry, where, f"entry {entry.get('id')!r}: ")


class QuestionFile(BaseModel):
    path: str
    questions: list[FreeFormQuestion]
    judges: dict[str, JudgeSpec]
    lines: dict[str, int]  # entry id -> line in the file

    def unused_keys(self) -> dict[str, list[str]]:
        entries = [*self.questions, *self.judges.values()]
        return {e.id: sorted(e.model_extra) for e in entries if e.model_extra}


def load_questions(path: Path | str) -> QuestionFile:
    path = Path(path)
    text = yamlfiles.read(path)
    data = yamlfiles.parse(text, str(path))
    root = yamlfiles.compose(text)
    if not isinstance(data, list) or not data:
        raise InputError(f"{path}: expected a non-empty list of questions and judges")
    questions: list[FreeFormQuestion] = []
    judges: dict[str, JudgeSpec] = {}
    lines: dict[str, int] = {}
    for node, entry in zip(root.value, data, strict=True):
        line = node.start_mark.line + 1
        if not isinstance(entry, dict):
            raise InputError(f"{path}:{line}: expected a mapping with id and type")
        where = f"{path}:{line}"
        if entry.get("type") == "free_form":
            parsed = _validate(FreeFormQuestion, entry, where)
        else:
            parsed = parse_judge(entry, where)
        if parsed.id in lines:
            raise InputError(
                f"{path}:{line}: id {parsed.id!r} is already used on line {lines[parsed.id]}"
            )
        lines[parsed.id] = line
        if isinstance(parsed, FreeFormQuestion):
            questions.append(parsed)
        else:
            judges[parsed.id] = parsed
    for q in questions:
        for column, judge in q.judges.items():
            if judge not in judges:
                raise InputError(
                    f"{path}:{lines[q.id]}: question {q.id!r} names judge {judge!r} "
                    f"(column {column!r}), which the file does not define"
                )
    return QuestionFile(path=str(path), questions=questions, judges=judges, lines=lines)
