"""wait_for, which every server and lab test waits with: a predicate that cannot answer yet
(NotYet) is retried, and a timeout says what it last heard."""

import pytest

from tests.support.waiting import NotYet, wait_for


def test_a_predicate_that_cannot_answer_yet_is_asked_again_until_it_can():
    answers = iter([NotYet("starting"), NotYet("starting"), "ready"])

    def ask():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert wait_for(ask, 5, "the server", interval=0.01) == "ready"


def test_a_timeout_names_what_was_awaited_and_the_last_reason():
    def ask():
        raise NotYet("HTTP 503 b'Service Unavailable'")

    with pytest.raises(TimeoutError, match=r"the server \(last: HTTP 503 b'Service Unavailable'\)"):
        wait_for(ask, 0.05, "the server", interval=0.01)


def test_any_other_error_is_not_swallowed():
    def ask():
        raise KeyError("result")

    with pytest.raises(KeyError):
        wait_for(ask, 5, "the server", interval=0.01)
