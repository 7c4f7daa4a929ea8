"""The packaged extraction suite: prose in, a JSON object with exact fields out."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

Record = tuple[str, str, dict[str, Any]]  # what to extract, the text, the expected fields
FIRST = ("Maria", "Tomasz", "Aiko", "Kwame", "Lucia", "Rahul", "Sven", "Nadia", "Omar", "Ines")
LAST = ("Okafor", "Lindqvist", "Moreau", "Tanaka", "Kowalski", "Haddad", "Silva", "Novak")
CITIES = ("Lisbon", "Osaka", "Nairobi", "Toronto", "Krakow", "Valparaiso", "Tallinn", "Austin")
PRODUCTS = ("desk lamp", "USB-C hub", "standing desk", "office chair", "monitor arm", "webcam")
CURRENCIES = ("EUR", "USD", "GBP", "JPY")
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
COMPANIES = ("Brightwave", "Northfield Labs", "Kestrel Robotics", "Oakline", "Tidepool Data")


def _person(r: random.Random) -> Record:
    first, last, city = r.choice(FIRST), r.choice(LAST), r.choice(CITIES)
    age = r.randint(19, 78)
    email = f"{first.lower()}.{last.lower()}{r.randint(1, 99)}@example.org"
    text = (
        f"{first} {last}, {age}, recently moved to {city} for a new job. Friends say "
        f"the best way to reach {first} is by email at {email}."
    )
    fields = {"name": f"{first} {last}", "age": age, "city": city, "email": email}
    return "name (full name, string), age (integer), city (string), email (string)", text, fields


def _order(r: random.Random) -> Record:
    order_id = f"A-{r.randint(10000, 99999)}"
    qty, product = r.randint(2, 40), r.choice(PRODUCTS)
    price, currency = r.randint(500, 25000) / 100, r.choice(CURRENCIES)
    text = (
        f"Hi, this is about order {order_id}: we asked for {qty} units of the {product}, "
        f"billed at {price:.2f} {currency} apiece, and nothing has arrived yet."
    )
    fields = {
        "order_id": order_id,
        "product": product,
        "quantity": qty,
        "unit_price": price,
        "currency": currency,
    }
    what = (
        "order_id (string), product (string), quantity (integer), unit_price (number), "
        "currency (three-letter code)"
    )
    return what, text, fields


def _meeting(r: random.Random) -> Record:
    month, day, year = r.randint(1, 12), r.randint(1, 28), r.choice((2025, 2026))
    hour, minute = r.randint(8, 17), r.choice((0, 15, 30, 45))
    people = r.sample(FIRST, 2)
    hour12 = hour - 12 if hour > 12 else hour
    clock = f"{hour12}:{minute:02d} {'pm' if hour >= 12 else 'am'}"
    text = (
        f"Let's move the planning review to {MONTHS[month - 1]} {day}, {year}, at {clock}. "
        f"{people[0]} will present and {people[1]} will take notes."
    )
    fields = {
        "date": f"{year}-{month:02d}-{day:02d}",
        "time": f"{hour:02d}:{minute:02d}",
        "attendees": people,
    }
    what = (
        "date (YYYY-MM-DD), time (24-hour HH:MM) and attendees (list of first names in the "
        "order mentioned)"
    )
    return what, text, fields


def _company(r: random.Random) -> Record:
    name, city = r.choice(COMPANIES), r.choice(CITIES)
    founded, staff = r.randint(1975, 2021), r.randint(12, 9000)
    text = (
        f"Since it was founded in {founded}, {name} has grown to {staff} employees; "
        f"its headquarters are still in {city}, though most staff now work remotely."
    )
    fields = {"company": name, "founded": founded, "employees": staff, "headquarters": city}
    what = "company (string), founded (integer year), employees (integer), headquarters (city)"
    return what, text, fields


TEMPLATES: tuple[Callable[[random.Random], Record], ...] = (_person, _order, _meeting, _company)


def extraction_samples(per_template: int = 8, seed: int = 11) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    samples: list[dict[str, Any]] = []
    for _ in range(per_template):
        for template in TEMPLATES:
            what, text, fields = template(rng)
            prompt = (
                f"Extract {what} from the text below. Reply with only a JSON object with exactly "
                f"those keys and no others.\n\nText: {text}"
            )
            samples.append(
                {
                    "id": f"extraction-{len(samples) + 1:03d}",
                    "task": "extraction",
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": 160,
                    "check": {"type": "json", "fields": fields, "exact_keys": True},
                    "answer": json.dumps(fields),
                }
            )
    return samples
