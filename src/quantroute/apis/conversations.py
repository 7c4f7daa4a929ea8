"""The Responses API's conversation state, kept by the gateway rather than by one backend.

vLLM keeps a response only in the memory of the server that produced it (and only with its store
enabled), so following ``previous_response_id`` there would pin a conversation to one backend
however loaded it is. The gateway keeps each stored response instead: the input items of its
turn, its output, and the ids of the responses before it in the conversation. A follow-up turn
is sent with the whole conversation as its ``input`` to whichever backend the decision picks.

Two stores behind :class:`ConversationStore`: :class:`MemoryConversations` (one replica; bounded
by entry count, least recently used evicted first) and
:class:`~quantroute.apis.conversations_redis.RedisConversations` (several replicas). Both expire
a response ``ttl_s`` after it was last written or continued; continuing a conversation refreshes
every response in it, so a live conversation does not lose its first turns.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Item = Mapping[str, Any]
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    ancestors: tuple[str, ...]
    """The earlier responses of the conversation, oldest first."""
    input_items: tuple[Item, ...]
    """This turn's own input items (text input stored as one user message)."""
    response: Mapping[str, Any]
    """The response object as the client received it; its ``output`` continues the chat."""
    owner: str | None = None
    """The name of the API key that created it (None: stored while no keys were configured):
    only that key may read, continue or delete it."""

    def visible_to(self, owner: str | None) -> bool:
        """Whether the caller (its key's name; None without keys) may see this response. A
        response of another key is answered as unknown: its existence is not disclosed."""
        return self.owner is None or self.owner == owner

    def output_items(self) -> list[Item]:
        output = self.response.get("output")
        return [item for item in output or [] if isinstance(item, Mapping)]

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "ancestors": list(self.ancestors),
                "input_items": list(self.input_items),
                "response": self.response,
                "owner": self.owner,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> StoredResponse:
        data = json.loads(text)
        return cls(
            data["id"],
            tuple(data["ancestors"]),
            tuple(data["input_items"]),
            data["response"],
            data.get("owner"),
        )


class ConversationStore(Protocol):
    async def put(self, record: StoredResponse) -> None: ...

    async def get(self, response_id: str) -> StoredResponse | None: ...

    async def get_many(self, response_ids: Sequence[str]) -> list[StoredResponse | None]:
        """Several responses in one round trip, each refreshed (a conversation in use)."""
        ...

    async def delete(self, response_id: str) -> bool: ...

    async def aclose(self) -> None: ...


class ConversationGone(Exception):
    """An earlier turn of the conversation has expired or was deleted."""

    def __init__(self, response_id: str) -> None:
        super().__init__(response_id)
        self.response_id = response_id


@dataclass(frozen=True, slots=True)
class Continuation:
    """What a turn after ``previous_response_id`` builds on."""

    ancestors: tuple[str, ...]
    """The new turn's ancestors: the previous response's, then the previous response."""
    items: list[Item]
    """The whole conversation so far as input items, oldest first."""


async def continuation(
    store: ConversationStore, previous_id: str, owner: str | None = None
) -> Continuation | None:
    """The conversation up to and including ``previous_id``'s output; None if it is unknown
    (or belongs to another key than ``owner``).

    Reading refreshes every turn's expiry. Raises :class:`ConversationGone` when an earlier
    turn is no longer stored (the conversation cannot be rebuilt whole).
    """
    head = await store.get(previous_id)
    if head is None or not head.visible_to(owner):
        return None
    turns = await store.get_many(head.ancestors)
    items: list[Item] = []
    for rid, turn in zip(head.ancestors, turns, strict=True):
        if turn is None:
            raise ConversationGone(rid)
        items += [*turn.input_items, *turn.output_items()]
    items += [*head.input_items, *head.output_items()]
    return Continuation((*head.ancestors, head.id), items)


class MemoryConversations:
    """In this process: at most ``max_entries`` responses, each for ``ttl_s`` since last use."""

    def __init__(self, *, max_entries: int, ttl_s: float, clock: Clock) -> None:
        self._entries: OrderedDict[str, tuple[float, StoredResponse]] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl_s
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    async def put(self, record: StoredResponse) -> None:
        self._entries[record.id] = (self._clock() + self._ttl, record)
        self._entries.move_to_end(record.id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def _touch(self, response_id: str) -> StoredResponse | None:
        entry = self._entries.get(response_id)
        if entry is None:
            return None
        now = self._clock()
        if entry[0] <= now:
            del self._entries[response_id]
            return None
        self._entries[response_id] = (now + self._ttl, entry[1])
        self._entries.move_to_end(response_id)
        return entry[1]

    async def get(self, response_id: str) -> StoredResponse | None:
        return self._touch(response_id)

    async def get_many(self, response_ids: Sequence[str]) -> list[StoredResponse | None]:
        return [self._touch(rid) for rid in response_ids]

    async def delete(self, response_id: str) -> bool:
        return self._entries.pop(response_id, None) is not None

    async def aclose(self) -> None:
        self._entries.clear()
