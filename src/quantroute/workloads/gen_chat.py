"""The packaged chat suite: everyday requests with a format rule the answer must follow."""

from __future__ import annotations

from typing import Any

TIPS: tuple[tuple[str, tuple[str, str, str]], ...] = (
    ("sleeping better", ("Keep a fixed bedtime", "Avoid screens late", "Keep the room cool")),
    ("learning a language", ("Practise daily", "Speak with natives", "Read simple books")),
    ("running a first 5k", ("Start slowly", "Rest between runs", "Wear good shoes")),
    ("saving money", ("Track spending", "Automate savings", "Cook at home")),
    ("working from home", ("Set fixed hours", "Use a separate desk", "Take real breaks")),
    ("writing clear emails", ("Lead with the ask", "Keep it short", "Use a clear subject")),
    ("public speaking", ("Rehearse aloud", "Slow down", "Pause instead of filler words")),
)
TERMS: tuple[tuple[str, str], ...] = (
    ("latency", "Latency is the delay between a request and the start of its response."),
    ("bandwidth", "Bandwidth is how much data a link can carry per second."),
    ("quantization", "Quantization stores model weights with fewer bits to save memory."),
    ("caching", "Caching keeps recent results close by so repeated requests are faster."),
    ("inflation", "Inflation is the general rise of prices, which lowers what money buys."),
    ("photosynthesis", "Photosynthesis is how plants turn light, water and CO2 into sugar."),
    ("compound interest", "Compound interest is interest earned on earlier interest too."),
)
CLUBS = ("chess", "hiking", "book", "photography", "robotics", "gardening")
LISTS: tuple[tuple[str, tuple[str, str, str, str]], ...] = (
    ("planets of the solar system", ("Mercury", "Venus", "Earth", "Mars")),
    ("primary or secondary colours", ("Red", "Blue", "Yellow", "Green")),
    ("string instruments", ("Violin", "Cello", "Guitar", "Harp")),
    ("programming languages", ("Python", "Rust", "Go", "Java")),
    ("European capital cities", ("Paris", "Madrid", "Rome", "Vienna")),
    ("kinds of renewable energy", ("Solar", "Wind", "Hydro", "Geothermal")),
)
ISSUES: tuple[tuple[str, str], ...] = (
    ("a late delivery", "your parcel is delayed by a day and will arrive tomorrow"),
    ("a double charge", "we refunded the duplicate payment this morning"),
    ("a forgotten password", "you can reset it from the sign-in page link"),
    ("a broken zipper on a jacket", "we will send a replacement free of charge"),
    ("changing a booking date", "we moved your booking to the new date"),
    ("a missing invoice", "we emailed the invoice again to your account address"),
)


def _sample(number: int, prompt: str, rules: list[dict[str, Any]], answer: str) -> dict[str, Any]:
    return {
        "id": f"chat-{number:03d}",
        "task": "chat",
        "messages": [
            {"role": "system", "content": "You are a friendly assistant."},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": 160,
        "check": {"type": "format", "rules": rules},
        "answer": answer,
    }


def _prompts() -> list[tuple[str, list[dict[str, Any]], str]]:
    out: list[tuple[str, list[dict[str, Any]], str]] = []
    rules: list[dict[str, Any]]
    for topic, tips in TIPS:
        prompt = (
            f"Give exactly 3 tips for {topic}, as a bulleted list with one '- ' bullet per "
            f"line and nothing else."
        )
        out.append((prompt, [{"rule": "bullets", "count": 3}], "\n".join(f"- {t}." for t in tips)))
    for term, definition in TERMS:
        prompt = f"In under 30 words, explain what {term} means. Use the word '{term}' in it."
        rules = [{"rule": "max_words", "value": 30}, {"rule": "includes", "words": [term]}]
        out.append((prompt, rules, definition))
    for club in CLUBS:
        prompt = (
            f"Write a one-sentence welcome message for new members of a {club} club, "
            f"entirely in lowercase letters."
        )
        rules = [{"rule": "lowercase"}, {"rule": "includes", "words": [club]}]
        out.append((prompt, rules, f"welcome to the {club} club, we are glad you are here!"))
    for kind, items in LISTS:
        prompt = f"List exactly 4 {kind} as a numbered list, one per line, with nothing else."
        answer = "\n".join(f"{i}. {item}" for i, item in enumerate(items, start=1))
        out.append((prompt, [{"rule": "numbered", "count": 4}], answer))
    for issue, fix in ISSUES:
        prompt = (
            f"A customer writes to us about {issue}. Reply in under 40 words, starting with "
            f"'Thank you' and ending with a question."
        )
        rules = [
            {"rule": "max_words", "value": 40},
            {"rule": "starts_with", "text": "Thank you"},
            {"rule": "ends_with", "text": "?"},
        ]
        answer = f"Thank you for writing to us; {fix}. Is there anything else we can help with?"
        out.append((prompt, rules, answer))
    return out


def chat_samples() -> list[dict[str, Any]]:
    return [
        _sample(i, prompt, rules, answer)
        for i, (prompt, rules, answer) in enumerate(_prompts(), start=1)
    ]
