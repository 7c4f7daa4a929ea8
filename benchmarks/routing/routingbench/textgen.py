"""Seeded, realistic filler text for prompts: prose, business documents, Python code, numeric notes.

Every generator takes a ``random.Random`` and a character budget and returns at least that many
characters (the caller cuts to the exact length). The prose deliberately avoids the words the
gateway's task heuristic counts as cues (``why``, ``code``, ``table``, ``reason``..., and digits
joined by ``-``/``x``), so the instruction, not the filler, decides the task type.
"""

from __future__ import annotations

import random

SUBJECTS = (
    "The regional team", "Our new supplier", "The finance group", "A longtime customer",
    "The support desk", "The marketing lead", "Our warehouse crew", "The product manager",
    "The design studio", "A visiting auditor", "The night shift", "The board",
    "The onboarding coach", "Our travel agent", "The city council", "The museum staff",
)  # fmt: skip
VERBS = (
    "reviewed", "rescheduled", "approved", "questioned", "shared", "summarised", "revisited",
    "postponed", "welcomed", "mentioned", "described", "praised", "updated", "cancelled",
    "confirmed", "discussed",
)  # fmt: skip
OBJECTS = (
    "the quarterly plan", "the spring catalogue", "the delivery schedule", "the office move",
    "the training budget", "the holiday rota", "the customer survey", "the hiring plan",
    "the annual report", "the venue booking", "the safety checklist", "the pricing update",
    "the partner agreement", "the garden project", "the loyalty programme", "the newsletter",
)  # fmt: skip
TAILS = (
    "before the long weekend", "after a short call with the vendor", "during the Monday stand-up",
    "with more patience than usual", "once the weather cleared", "while the manager was away",
    "in a friendly but firm email", "at the end of a busy week", "over coffee in the lobby",
    "without much fuss", "after several rounds of feedback", "in front of the whole department",
    "as the deadline came closer", "despite a few late changes", "with help from two interns",
)  # fmt: skip
OPENERS = (
    "Meanwhile,", "Later that day,", "As expected,", "To everyone's relief,", "In the end,",
    "Honestly,", "On Thursday,", "By the afternoon,", "Not long after,", "Once again,",
)  # fmt: skip
FIRST_NAMES = (
    "Amara", "Bruno", "Chen", "Dalia", "Elif", "Farid", "Greta", "Hiro", "Ines", "Jonas",
    "Kwame", "Lena", "Mateo", "Noor", "Oskar", "Priya", "Quinn", "Rosa", "Sami", "Tove",
)  # fmt: skip
LAST_NAMES = (
    "Okafor", "Lindqvist", "Moreau", "Tanaka", "Haddad", "Kowalski", "Silva", "Novak",
    "Brennan", "Achebe", "Varga", "Castillo", "Nakamura", "Petrov", "Osei", "Fischer",
)  # fmt: skip
CITIES = (
    "Lisbon", "Denver", "Nairobi", "Osaka", "Toronto", "Krakow", "Melbourne", "Austin",
    "Rotterdam", "Santiago", "Dublin", "Seoul",
)  # fmt: skip
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
PRODUCTS = (
    "standing desk", "monitor arm", "ergonomic chair", "label printer", "desk lamp",
    "noise-cancelling headset", "webcam", "docking station", "paper shredder", "whiteboard",
)  # fmt: skip
ITEMS = (
    "crates of apples", "boxes of paper", "bags of rice", "rolls of tape", "packs of batteries",
    "bottles of water", "sacks of flour", "cartons of milk",
)  # fmt: skip


def _sentence(rng: random.Random) -> str:
    opener = rng.choice(OPENERS) + " " if rng.random() < 0.3 else ""
    subject = rng.choice(SUBJECTS)
    if opener:
        subject = subject[0].lower() + subject[1:]
    return f"{opener}{subject} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}."


def prose(rng: random.Random, chars: int) -> str:
    """Paragraphs of plain business/everyday English, at least ``chars`` characters."""
    parts: list[str] = []
    size = 0
    while size < chars:
        paragraph = " ".join(_sentence(rng) for _ in range(rng.randint(3, 6)))
        parts.append(paragraph)
        size += len(paragraph) + 2
    return "\n\n".join(parts)


def person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _date(rng: random.Random) -> str:
    return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {rng.randint(2023, 2026)}"


def _email_block(rng: random.Random) -> str:
    sender, receiver = person(rng), person(rng)
    qty, price = rng.randint(2, 60), rng.randint(15, 900)
    return (
        f"From: {sender}\nTo: {receiver}\nDate: {_date(rng)}\nSubject: Order for the "
        f"{rng.choice(CITIES)} office\n\nHello {receiver.split()[0]},\n\n"
        f"We would like {qty} units of the {rng.choice(PRODUCTS)} at {price} USD each, "
        f"delivered to our {rng.choice(CITIES)} site by {_date(rng)}. {_sentence(rng)} "
        f"{_sentence(rng)}\n\nBest regards,\n{sender}\n"
    )


def _memo_block(rng: random.Random) -> str:
    return (
        f"Meeting notes, {_date(rng)}, {rng.choice(CITIES)}\nPresent: {person(rng)}, "
        f"{person(rng)}, {person(rng)}\n"
        + "\n".join(f"* {_sentence(rng)}" for _ in range(rng.randint(3, 5)))
        + "\n"
    )


def document(rng: random.Random, chars: int) -> str:
    """Emails, meeting notes and prose: the kind of text people extract fields from."""
    parts: list[str] = []
    size = 0
    while size < chars:
        pick = rng.random()
        block = (
            _email_block(rng) if pick < 0.4 else _memo_block(rng) if pick < 0.7 else prose(rng, 400)
        )
        parts.append(block)
        size += len(block) + 2
    return "\n\n".join(parts)


NOUNS = ("order", "invoice", "user", "record", "event", "batch", "session", "ticket", "report")
VERBS_CODE = ("load", "parse", "merge", "validate", "render", "group", "score", "normalise")


def _function(rng: random.Random) -> str:
    noun, verb = rng.choice(NOUNS), rng.choice(VERBS_CODE)
    name = f"{verb}_{noun}s"
    limit = rng.randint(2, 50)
    return (
        f"def {name}(items, limit={limit}):\n"
        f'    """{verb.capitalize()} {noun}s and keep at most limit of them."""\n'
        f"    result = []\n"
        f"    for item in items:\n"
        f"        if item.get('{noun}_id') is None:\n"
        f"            continue\n"
        f"        result.append(dict(item, status='{verb}d'))\n"
        f"        if len(result) >= limit:\n"
        f"            break\n"
        f"    return result\n"
    )


def _class(rng: random.Random) -> str:
    noun = rng.choice(NOUNS)
    cls = noun.capitalize() + "Store"
    return (
        f"class {cls}:\n"
        f"    def __init__(self, path):\n"
        f"        self.path = path\n"
        f"        self._cache = {{}}\n\n"
        f"    def get(self, key):\n"
        f"        if key not in self._cache:\n"
        f"            self._cache[key] = self._read(key)\n"
        f"        return self._cache[key]\n\n"
        f"    def _read(self, key):\n"
        f"        with open(self.path, encoding='utf-8') as fh:\n"
        f"            return json.load(fh).get(key)\n"
    )


def python_source(rng: random.Random, chars: int) -> str:
    """A plausible Python module: imports, helper functions and small classes."""
    parts = ["import json\nimport logging\nfrom pathlib import Path\n"]
    size = len(parts[0])
    while size < chars:
        block = _function(rng) if rng.random() < 0.65 else _class(rng)
        parts.append(block)
        size += len(block) + 2
    return "\n\n".join(parts)


def numeric_notes(rng: random.Random, chars: int) -> str:
    """Stock-keeping notes full of quantities (background for a word problem)."""
    lines: list[str] = []
    size = 0
    while size < chars:
        line = (
            f"On {_date(rng)} the {rng.choice(CITIES)} depot received {rng.randint(5, 400)} "
            f"{rng.choice(ITEMS)} and sent out {rng.randint(5, 300)} of them; "
            f"{rng.choice(FIRST_NAMES)} counted {rng.randint(0, 40)} damaged ones."
        )
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)


def answer_text(rng: random.Random, tokens: int) -> str:
    """An answer of exactly ``tokens`` simulator pieces, ending in a number.

    The simulator cuts output into pieces of one whitespace run plus up to 6 characters, so short
    words are one piece each. The final number lets a wrong answer (the simulator changes the last
    number) keep the same length.
    """
    words = [rng.choice(("the", "plan", "is", "done", "we", "can", "ship", "it", "now", "ok"))]
    words += [
        rng.choice(("and", "then", "so", "a", "new", "team", "all", "set"))
        for _ in range(tokens - 2)
    ]
    return " ".join([*words[: max(0, tokens - 1)], str(rng.randint(10, 99))])
