"""The packaged coding suite's function specifications: name, parameters, task, reference body."""

from __future__ import annotations

from typing import Any

# (name, parameters, what it must do, reference implementation body)
SPECS: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    (
        "is_palindrome",
        ("text",),
        "returns True when text reads the same backwards, ignoring case",
        "t = text.lower()\nreturn t == t[::-1]",
    ),
    (
        "fizzbuzz",
        ("n",),
        "returns the FizzBuzz word or number (as a string) for n",
        "if n % 15 == 0:\n    return 'FizzBuzz'\nif n % 3 == 0:\n    return 'Fizz'\n"
        "if n % 5 == 0:\n    return 'Buzz'\nreturn str(n)",
    ),
    (
        "gcd",
        ("a", "b"),
        "returns the greatest common divisor of two non-negative integers",
        "while b:\n    a, b = b, a % b\nreturn a",
    ),
    (
        "flatten",
        ("items",),
        "flattens one level of nested lists into a single list",
        "out = []\nfor item in items:\n    out.extend(item)\nreturn out",
    ),
    (
        "count_vowels",
        ("text",),
        "counts the vowels (a, e, i, o, u, any case) in text",
        "return sum(1 for c in text.lower() if c in 'aeiou')",
    ),
    (
        "celsius_to_fahrenheit",
        ("celsius",),
        "converts a temperature from Celsius to Fahrenheit",
        "return celsius * 9 / 5 + 32",
    ),
    (
        "chunk",
        ("items", "size"),
        "splits a list into consecutive chunks of at most size items",
        "return [items[i:i + size] for i in range(0, len(items), size)]",
    ),
    (
        "median",
        ("values",),
        "returns the median of a non-empty list of numbers",
        "s = sorted(values)\nmid = len(s) // 2\n"
        "return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2",
    ),
    (
        "word_frequencies",
        ("text",),
        "returns a dict mapping each lowercase word to its count",
        "counts = {}\nfor word in text.lower().split():\n"
        "    counts[word] = counts.get(word, 0) + 1\nreturn counts",
    ),
    (
        "is_prime",
        ("n",),
        "returns True when n is a prime number",
        "if n < 2:\n    return False\ni = 2\nwhile i * i <= n:\n    if n % i == 0:\n"
        "        return False\n    i += 1\nreturn True",
    ),
    (
        "factorial",
        ("n",),
        "returns n! for a non-negative integer n",
        "result = 1\nfor i in range(2, n + 1):\n    result *= i\nreturn result",
    ),
    (
        "fibonacci",
        ("n",),
        "returns the n-th Fibonacci number, with fibonacci(0) == 0",
        "a, b = 0, 1\nfor _ in range(n):\n    a, b = b, a + b\nreturn a",
    ),
    (
        "reverse_words",
        ("sentence",),
        "returns the sentence with its words in reverse order",
        "return ' '.join(reversed(sentence.split()))",
    ),
    (
        "dedupe",
        ("items",),
        "removes duplicates from a list, keeping the first occurrence order",
        "seen = set()\nout = []\nfor item in items:\n    if item not in seen:\n"
        "        seen.add(item)\n        out.append(item)\nreturn out",
    ),
    (
        "clamp",
        ("value", "low", "high"),
        "limits value to the closed range [low, high]",
        "return max(low, min(high, value))",
    ),
    (
        "sum_of_digits",
        ("n",),
        "returns the sum of the decimal digits of a non-negative integer",
        "return sum(int(d) for d in str(n))",
    ),
    (
        "binary_search",
        ("items", "target"),
        "returns the index of target in a sorted list, or -1 when it is absent",
        "lo, hi = 0, len(items) - 1\nwhile lo <= hi:\n    mid = (lo + hi) // 2\n"
        "    if items[mid] == target:\n        return mid\n    if items[mid] < target:\n"
        "        lo = mid + 1\n    else:\n        hi = mid - 1\nreturn -1",
    ),
    (
        "merge_dicts",
        ("first", "second"),
        "returns a new dict with the keys of both, the second winning on conflicts",
        "merged = dict(first)\nmerged.update(second)\nreturn merged",
    ),
    (
        "rotate_list",
        ("items", "k"),
        "rotates a list right by k positions",
        "if not items:\n    return []\nk %= len(items)\nreturn items[-k:] + items[:-k]",
    ),
    (
        "is_anagram",
        ("first", "second"),
        "returns True when the two words are anagrams of each other, ignoring case",
        "return sorted(first.lower()) == sorted(second.lower())",
    ),
    (
        "transpose",
        ("matrix",),
        "returns the transpose of a rectangular list of lists",
        "return [list(row) for row in zip(*matrix)]",
    ),
    (
        "running_sum",
        ("values",),
        "returns the list of cumulative sums of values",
        "out = []\ntotal = 0\nfor v in values:\n    total += v\n    out.append(total)\nreturn out",
    ),
    (
        "max_subarray",
        ("values",),
        "returns the largest sum of a contiguous non-empty sub-list",
        "best = current = values[0]\nfor v in values[1:]:\n    current = max(v, current + v)\n"
        "    best = max(best, current)\nreturn best",
    ),
    (
        "roman_to_int",
        ("numeral",),
        "converts a Roman numeral string to an integer",
        "vals = {'I': 1, 'V': 5, 'X': 10, 'L': 50, 'C': 100, 'D': 500, 'M': 1000}\n"
        "total = 0\nfor i, c in enumerate(numeral):\n"
        "    v = vals[c]\n    if i + 1 < len(numeral) and vals[numeral[i + 1]] > v:\n"
        "        total -= v\n    else:\n        total += v\nreturn total",
    ),
    (
        "to_binary",
        ("n",),
        "returns the binary representation of a non-negative integer as text",
        "return bin(n)[2:]",
    ),
    (
        "count_words",
        ("text",),
        "returns the number of whitespace-separated words in text",
        "return len(text.split())",
    ),
    (
        "second_largest",
        ("values",),
        "returns the second largest distinct value in a list",
        "return sorted(set(values))[-2]",
    ),
    (
        "title_case",
        ("text",),
        "capitalises the first letter of every word in text",
        "return ' '.join(w[:1].upper() + w[1:] for w in text.split())",
    ),
    (
        "is_leap_year",
        ("year",),
        "returns True when year is a Gregorian leap year",
        "return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)",
    ),
    (
        "hamming_distance",
        ("first", "second"),
        "returns the number of positions at which two equal-length strings differ",
        "return sum(1 for a, b in zip(first, second) if a != b)",
    ),
    (
        "mean",
        ("values",),
        "returns the arithmetic mean of a non-empty list of numbers",
        "return sum(values) / len(values)",
    ),
    (
        "caesar_shift",
        ("text", "shift"),
        "shifts each lowercase letter of text forward by shift places, wrapping around",
        "out = []\nfor c in text:\n    if 'a' <= c <= 'z':\n"
        "        c = chr((ord(c) - 97 + shift) % 26 + 97)\n    out.append(c)\nreturn ''.join(out)",
    ),
)


def _indent(body: str) -> str:
    return "\n".join("    " + line if line else line for line in body.splitlines())


def coding_samples() -> list[dict[str, Any]]:
    samples = []
    for i, (name, params, does, body) in enumerate(SPECS, start=1):
        signature = f"{name}({', '.join(params)})"
        prompt = (
            f"Write a Python function named `{name}` with the signature `{signature}` that "
            f"{does}. Reply with only the code in a ```python block."
        )
        answer = f"```python\ndef {signature}:\n{_indent(body)}\n```"
        samples.append(
            {
                "id": f"coding-{i:03d}",
                "task": "coding",
                "messages": [
                    {"role": "system", "content": "You are a careful Python programmer."},
                    {"role": "user", "content": prompt},
                ],
                "max_tokens": 320,
                "check": {"type": "python_function", "name": name, "args": list(params)},
                "answer": answer,
            }
        )
    return samples
