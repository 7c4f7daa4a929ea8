"""The packaged reasoning suite: multi-step arithmetic word problems with one numeric answer."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

Problem = tuple[str, str, int]  # question, worked steps, answer
NAMES = ("Ana", "Bilal", "Chen", "Dara", "Emeka", "Freya", "Goran", "Hana", "Ivo", "Jun")


def _pens(r: random.Random) -> Problem:
    a, b, d = r.randint(3, 19), r.randint(6, 24), r.randint(3, 12)
    q = (
        f"A stationery shop sells {a} boxes of pens every day and each box holds {b} pens. "
        f"How many pens does it sell in {d} days?"
    )
    return q, f"{a} x {b} = {a * b} pens a day; {a * b} x {d} = {a * b * d}.", a * b * d


def _marbles(r: random.Random) -> Problem:
    name = r.choice(NAMES)
    x, y, z, w = r.randint(40, 90), r.randint(5, 35), r.randint(2, 6), r.randint(8, 15)
    q = (
        f"{name} has {x} marbles, gives {y} of them to a friend, then buys {z} bags of {w} "
        f"marbles each. How many marbles does {name} have now?"
    )
    total = x - y + z * w
    return q, f"{x} - {y} = {x - y}; {z} x {w} = {z * w}; {x - y} + {z * w} = {total}.", total


def _train(r: random.Random) -> Problem:
    v, h, u, k = r.randint(6, 12) * 10, r.randint(2, 5), r.randint(4, 9) * 10, r.randint(1, 4)
    q = (
        f"A train travels at {v} km/h for {h} hours, then at {u} km/h for {k} hours. "
        f"How many kilometres does it travel in total?"
    )
    total = v * h + u * k
    return q, f"{v} x {h} = {v * h}; {u} x {k} = {u * k}; sum {total}.", total


def _cakes(r: random.Random) -> Problem:
    per, cakes, rest = r.randint(18, 45) * 10, r.randint(4, 15), r.randint(10, 170)
    flour = per * cakes + rest
    q = (
        f"A cake needs {per} grams of flour. A baker has {flour} grams of flour. "
        f"How many whole cakes can the baker make?"
    )
    return q, f"{flour} / {per} = {flour / per:.2f}, so {cakes} whole cakes.", cakes


def _tickets(r: random.Random) -> Problem:
    p, c, na, nc = r.randint(12, 30), r.randint(5, 11), r.randint(2, 9), r.randint(2, 12)
    q = (
        f"Museum tickets cost ${p} for adults and ${c} for children. A group of {na} adults "
        f"and {nc} children buys tickets. How many dollars do they pay in total?"
    )
    total = p * na + c * nc
    return q, f"{p} x {na} = {p * na}; {c} x {nc} = {c * nc}; total {total}.", total


def _tank(r: random.Random) -> Problem:
    cap, pct = r.randint(5, 60) * 20, r.randint(1, 19) * 5
    missing = cap * (100 - pct) // 100
    q = (
        f"A water tank holds {cap} litres and is {pct}% full. How many more litres are needed "
        f"to fill it?"
    )
    return q, f"{100 - pct}% of {cap} = {missing}.", missing


def _consecutive(r: random.Random) -> Problem:
    middle = r.randint(12, 400)
    q = f"The sum of three consecutive integers is {3 * middle}. What is the largest of the three?"
    return (
        q,
        f"The middle one is {3 * middle} / 3 = {middle}; the largest is {middle + 1}.",
        (middle + 1),
    )


def _rectangle(r: random.Random) -> Problem:
    w, length = r.randint(3, 20), r.randint(21, 45)
    q = (
        f"A rectangle has a perimeter of {2 * (w + length)} cm and a width of {w} cm. "
        f"What is its area in square centimetres?"
    )
    area = w * length
    return q, f"Length = {w + length} - {w} = {length}; area = {length} x {w} = {area}.", area


TEMPLATES: tuple[Callable[[random.Random], Problem], ...] = (
    _pens,
    _marbles,
    _train,
    _cakes,
    _tickets,
    _tank,
    _consecutive,
    _rectangle,
)
INSTRUCTION = "Think step by step, then finish with a final line of the form 'Answer: <number>'."


def reasoning_samples(per_template: int = 4, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    samples: list[dict[str, Any]] = []
    for _ in range(per_template):
        for template in TEMPLATES:
            question, steps, answer = template(rng)
            number = len(samples) + 1
            samples.append(
                {
                    "id": f"reasoning-{number:03d}",
                    "task": "reasoning",
                    "messages": [{"role": "user", "content": f"{question} {INSTRUCTION}"}],
                    "max_tokens": 256,
                    "check": {"type": "number", "value": answer},
                    "answer": f"{steps}\nAnswer: {answer}",
                }
            )
    return samples
