"""Request.check_stop: the order of the stop rules and the finish reasons users see."""

import pytest

from policy import Request, RequestStatus

MAX_LEN = 100


def finish_after(req: Request, tokens: list[int], max_model_len: int = MAX_LEN):
    """Append tokens one by one as the scheduler does; return (status, tokens consumed)."""
    for i, tok in enumerate(tokens, 1):
        req.append_output_token(tok)
        status = req.check_stop(max_model_len)
        if status is not None:
            return status, i
    return None, len(tokens)


def test_eos_stops_and_is_reported_as_stop():
    req = Request("r", [1, 2, 3], max_tokens=10, eos_token_id=9)
    assert finish_after(req, [4, 9, 5]) == (RequestStatus.FINISHED_STOPPED, 2)
    assert req.output_token_ids == [4, 9]


def test_ignore_eos_keeps_generating_until_max_tokens():
    req = Request("r", [1], max_tokens=4, eos_token_id=9, ignore_eos=True)
    assert finish_after(req, [9, 9, 9, 9, 9]) == (RequestStatus.FINISHED_LENGTH_CAPPED, 4)


def test_stop_token_ids_stop_and_record_the_token():
    req = Request("r", [1], max_tokens=10, eos_token_id=9, stop_token_ids=(7, 8))
    assert finish_after(req, [3, 8, 1]) == (RequestStatus.FINISHED_STOPPED, 2)
    assert req.stop_token == 8


def test_stop_token_ids_apply_even_with_ignore_eos():
    req = Request("r", [1], max_tokens=10, eos_token_id=9, stop_token_ids=(7,), ignore_eos=True)
    assert finish_after(req, [9, 7]) == (RequestStatus.FINISHED_STOPPED, 2)


def test_min_tokens_suppresses_eos_and_stop_tokens_until_reached():
    req = Request("r", [1], max_tokens=10, eos_token_id=9, stop_token_ids=(7,), min_tokens=3)
    # eos at output 1 and a stop token at output 2 are ignored; eos at output 3 stops.
    assert finish_after(req, [9, 7, 9]) == (RequestStatus.FINISHED_STOPPED, 3)


def test_min_tokens_does_not_override_length_caps():
    req = Request("r", [1], max_tokens=2, min_tokens=5, eos_token_id=9)
    assert finish_after(req, [9, 9, 9]) == (RequestStatus.FINISHED_LENGTH_CAPPED, 2)
    req = Request("r", [1, 2, 3], max_tokens=50, min_tokens=20)
    assert finish_after(req, [4] * 10, max_model_len=6) == (RequestStatus.FINISHED_LENGTH_CAPPED, 3)


def test_max_tokens_caps_length():
    req = Request("r", [1, 2], max_tokens=3, eos_token_id=9)
    assert finish_after(req, [1, 2, 3, 4]) == (RequestStatus.FINISHED_LENGTH_CAPPED, 3)
    assert req.num_output_tokens == 3


def test_max_model_len_caps_prompt_plus_output():
    req = Request("r", [1] * 7, max_tokens=100)
    assert finish_after(req, [2] * 10, max_model_len=10) == (RequestStatus.FINISHED_LENGTH_CAPPED, 3)
    assert req.num_tokens == 10


def test_eos_on_the_last_allowed_token_reports_stop():
    # vLLM's order: the eos/stop checks come before the length cap.
    req = Request("r", [1], max_tokens=2, eos_token_id=9)
    assert finish_after(req, [3, 9]) == (RequestStatus.FINISHED_STOPPED, 2)


def test_no_eos_id_means_only_length_stops():
    req = Request("r", [1], max_tokens=3)
    assert finish_after(req, [0, 0, 0]) == (RequestStatus.FINISHED_LENGTH_CAPPED, 3)


def test_status_order_and_token_views():
    assert not RequestStatus.PREEMPTED.is_finished
    assert all(s.is_finished for s in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH_CAPPED,
                                       RequestStatus.FINISHED_ABORTED))
    prompt = [5, 6]
    req = Request("r", prompt, max_tokens=3)
    prompt.append(99)  # the request keeps its own copy
    req.append_output_token(1)
    assert (req.num_prompt_tokens, req.num_tokens, req.output_token_ids) == (2, 3, [1])


@pytest.mark.parametrize("tokens", [[9], [7]])
def test_stop_after_min_tokens_boundary_exactly(tokens):
    req = Request("r", [1], max_tokens=5, eos_token_id=9, stop_token_ids=(7,), min_tokens=1)
    assert finish_after(req, tokens) == (RequestStatus.FINISHED_STOPPED, 1)
