"""Stored responses belong to the key that created them: another key (an admin's too) cannot
read, continue, cancel or delete one, and is told it does not exist (no disclosure)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from .stack import ADMIN, OTHER, USER, Stack, access_stack


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with access_stack() as s:
        yield s


def test_a_stored_response_is_only_the_creating_keys(stack: Stack) -> None:
    mine = stack.client(USER)
    first = mine.responses.create(model="auto", input="Name a prime number.", max_output_tokens=8)
    assert mine.responses.retrieve(first.id).id == first.id
    for key, model in ((OTHER, "premium"), (ADMIN, "auto")):
        theirs = stack.client(key)
        with pytest.raises(openai.NotFoundError) as read:
            theirs.responses.retrieve(first.id)
        assert read.value.code == "response_not_found"
        with pytest.raises(openai.NotFoundError) as follow:
            theirs.responses.create(
                model=model,
                input="And another?",
                previous_response_id=first.id,
                max_output_tokens=8,
            )
        assert follow.value.code == "previous_response_not_found"
        with pytest.raises(openai.NotFoundError):
            theirs.responses.cancel(first.id)
        with pytest.raises(openai.NotFoundError):
            theirs.responses.delete(first.id)
    # still there for its owner, who can continue and then delete it
    second = mine.responses.create(
        model="auto", input="And another?", previous_response_id=first.id, max_output_tokens=8
    )
    assert second.previous_response_id == first.id
    mine.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        mine.responses.retrieve(first.id)
