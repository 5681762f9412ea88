"""Logical formulas of concepts: the labels of compositional explanations (`fd.compositional`).

A formula is a tree of `Leaf` (a concept id), `Not`, `And` and `Or`. Its text is compexp's
format, so results read and compare alike: ``((3 OR 7) AND (NOT 1))``; `parse` reads it back.
Its length is compexp's: the number of leaves plus one per NOT, the exponent of the penalty.

>>> import fastdissect as fd
>>> f = fd.Or(fd.Leaf(3), fd.Leaf(7)) & ~fd.Leaf(1)
>>> str(f), len(f)
('((3 OR 7) AND (NOT 1))', 4)
>>> f.to_str(["-", "water", "x", "river", "x", "x", "x", "lake"])
'((river OR lake) AND (NOT water))'
>>> fd.Formula.parse(str(f)) == f
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence, Union

Names = Union[Sequence[str], Callable[[int], str], None]


class Formula:
    """Base of Leaf / Not / And / Or. Immutable and hashable; `==` compares structure."""

    def __and__(self, other: "Formula") -> "And":
        return And(self, other)

    def __or__(self, other: "Formula") -> "Or":
        return Or(self, other)

    def __invert__(self) -> "Not":
        return Not(self)

    def __str__(self) -> str:
        return self.to_str()

    def to_str(self, names: Names = None) -> str:
        """The formula with concept names: `names` is a sequence indexed by concept id or a callable."""
        raise NotImplementedError

    def concepts(self) -> list[int]:
        """Concept ids in the order they appear."""
        raise NotImplementedError

    @staticmethod
    def parse(text: str) -> "Formula":
        """Reads compexp's format back: integers joined by AND / OR, NOT, fully parenthesised."""
        return _Parser(text).formula()


@dataclass(frozen=True, eq=True, repr=True)
class Leaf(Formula):
    concept: int

    def __post_init__(self):
        if isinstance(self.concept, bool) or not isinstance(self.concept, int) or self.concept < 0:
            raise ValueError(f"Leaf takes a concept id (int >= 0), got {self.concept!r}")

    def __len__(self) -> int:
        return 1

    def to_str(self, names: Names = None) -> str:
        if names is None:
            return str(self.concept)
        return names(self.concept) if callable(names) else str(names[self.concept])

    def concepts(self) -> list[int]:
        return [self.concept]



@dataclass(frozen=True, eq=True, repr=True)
class Not(Formula):
    operand: Formula

    def __len__(self) -> int:
        return 1 + len(self.operand)

    def to_str(self, names: Names = None) -> str:
        return f"(NOT {self.operand.to_str(names)})"

    def concepts(self) -> list[int]:
        return self.operand.concepts()



@dataclass(frozen=True, eq=True, repr=True)
class _Binary(Formula):
    left: Formula
    right: Formula
    op = ""

    def __len__(self) -> int:
        return len(self.left) + len(self.right)

    def to_str(self, names: Names = None) -> str:
        return f"({self.left.to_str(names)} {self.op} {self.right.to_str(names)})"

    def concepts(self) -> list[int]:
        return self.left.concepts() + self.right.concepts()


@dataclass(frozen=True, eq=True, repr=True)
class And(_Binary):
    op = "AND"


@dataclass(frozen=True, eq=True, repr=True)
class Or(_Binary):
    op = "OR"


class _Parser:
    _TOKEN = re.compile(r"\s*(\(|\)|AND\b|OR\b|NOT\b|\d+)")

    def __init__(self, text: str):
        self.text, self.tokens, pos = text, [], 0
        while pos < len(text.rstrip()):
            m = self._TOKEN.match(text, pos)
            if not m:
                raise ValueError(f"cannot parse formula {text!r} at character {pos}: expected '(', ')', "
                                 "AND, OR, NOT or a concept id")
            self.tokens.append(m.group(1))
            pos = m.end()
        self.i = 0

    def _next(self) -> str:
        if self.i >= len(self.tokens):
            raise ValueError(f"formula {self.text!r} ends early")
        self.i += 1
        return self.tokens[self.i - 1]

    def _expect(self, token: str) -> None:
        got = self._next()
        if got != token:
            raise ValueError(f"formula {self.text!r}: expected {token!r}, got {got!r}")

    def formula(self) -> Formula:
        f = self._term()
        if self.i != len(self.tokens):
            raise ValueError(f"formula {self.text!r}: unexpected {self.tokens[self.i]!r} after the formula")
        return f

    def _term(self) -> Formula:
        tok = self._next()
        if tok.isdigit():
            return Leaf(int(tok))
        if tok != "(":
            raise ValueError(f"formula {self.text!r}: expected a concept id or '(', got {tok!r}")
        if self.tokens[self.i:self.i + 1] == ["NOT"]:
            self._next()
            f: Formula = Not(self._term())
        else:
            left = self._term()
            op = self._next()
            if op not in ("AND", "OR"):
                raise ValueError(f"formula {self.text!r}: expected AND or OR, got {op!r}")
            f = (And if op == "AND" else Or)(left, self._term())
        self._expect(")")
        return f


__all__ = ["Formula", "Leaf", "Not", "And", "Or"]
