"""Token counts and output text without a tokenizer, deterministic.

Prompt length is estimated the way a router can estimate it too: about 4 characters
per token (the usual figure for English with Llama 3's and Qwen 2.5's BPE
vocabularies), over every message's text, plus the chat template's tokens. Llama 3's
template puts 5 special/role tokens around each message (`<|start_header_id|>`, the
role, `<|end_header_id|>`, the blank line, `<|eot_id|>`) and 5 more before the answer
(`<|begin_of_text|>` and the assistant header); completions add only the BOS token.

For prefix caching the simulator needs the prompt's tokens, not only their count: a
prompt is rendered as the template's special tokens around 4-character chunks of each
message's text (`chat_prompt_pieces`), exactly as many as the estimate counts, so equal
leading messages give equal leading tokens, as a real tokenizer would.

Output text is cut into pieces, one per generated token: a run of whitespace with up to
6 following characters, so the pieces joined give the text back exactly.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence

CHARS_PER_TOKEN = 4
CHAT_TOKENS_PER_MESSAGE = 5
CHAT_TOKENS_PRIMING = 5
COMPLETION_TOKENS_PRIMING = 1

_PIECE = re.compile(r"\s*\S{1,6}|\s+")
_SYLLABLES = ("ba", "ce", "di", "fo", "gu", "ha", "ki", "lo", "mu", "na", "pe", "ri",
              "so", "ta", "vi", "zo", "le", "mi", "ro", "su")  # fmt: skip


def text_tokens(text: str) -> int:
    """Estimated tokens of a piece of text: ceil(characters / 4)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def chat_prompt_tokens(contents: Sequence[str]) -> int:
    """Estimated prompt tokens of a chat: each message's text and template tokens."""
    body = sum(text_tokens(c) + CHAT_TOKENS_PER_MESSAGE for c in contents)
    return body + CHAT_TOKENS_PRIMING


def continued_chat_prompt_tokens(contents: Sequence[str]) -> int:
    """Prompt tokens of a chat whose final (assistant) message is continued: no end-of-turn
    after it and no new assistant header, and its text counted in output-token pieces, so that
    a continuation's prompt is the original prompt plus exactly the tokens generated so far."""
    *earlier, prefix = contents
    return chat_prompt_tokens(earlier) + len(split_pieces(prefix))


def completion_prompt_tokens(prompt: str) -> int:
    """Estimated prompt tokens of a completion prompt (BOS + text)."""
    return text_tokens(prompt) + COMPLETION_TOKENS_PRIMING


def _text_pieces(text: str) -> list[str]:
    return [text[i : i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]


def chat_prompt_pieces(messages: Sequence[tuple[str, str]]) -> list[str]:
    """The tokens of a chat prompt of (role, text) messages, Llama 3's template shape:
    BOS, each message as header (3 special tokens and the blank line), text and end of
    turn, then the assistant header. `len()` equals `chat_prompt_tokens` of the texts."""
    pieces = ["<|begin_of_text|>"]
    for role, text in messages:
        pieces += ["<|start_header_id|>", role, "<|end_header_id|>", "\n\n"]
        pieces += _text_pieces(text)
        pieces.append("<|eot_id|>")
    pieces += ["<|start_header_id|>", "assistant", "<|end_header_id|>", "\n\n"]
    return pieces


def continued_chat_prompt_pieces(messages: Sequence[tuple[str, str]]) -> list[str]:
    """The tokens of a chat whose final (assistant) message is continued: the earlier messages
    as a chat prompt (ending in the assistant header), then that message's text in output-token
    pieces. `len()` equals `continued_chat_prompt_tokens` of the texts."""
    *earlier, (_, prefix) = messages
    return [*chat_prompt_pieces(earlier), *split_pieces(prefix)]


def completion_prompt_pieces(prompt: str) -> list[str]:
    """The tokens of a completion prompt: BOS and 4-character chunks."""
    return ["<|begin_of_text|>", *_text_pieces(prompt)]


def split_pieces(text: str) -> list[str]:
    """Cut `text` into output-token pieces whose concatenation is `text`."""
    return _PIECE.findall(text)


class FillerText:
    """Made-up words, one per token, the same for the same seed."""

    def __init__(self, seed: str) -> None:
        self._rng = random.Random(seed)
        self._pieces: list[str] = []

    def piece(self, index: int) -> str:
        """The text of output token `index` (a space and a 2-3 syllable word)."""
        while len(self._pieces) <= index:
            syllables = self._rng.choices(_SYLLABLES, k=self._rng.randint(1, 3))
            self._pieces.append(" " + "".join(syllables))
        return self._pieces[index]
