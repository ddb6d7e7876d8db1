"""generate(request) in-process with the real mlx-lm and the tiny model: the replies, stop strings, the
context window, the prompt cache, cancellation, and what is written to the database."""

from __future__ import annotations

import re
import threading
import time

import pytest

from models_app.models import Message, Usage
from models_app.services import inference
from models_app.services.engine.logprobs import LogprobRelease
from models_app.services.engine.prompt import build_chat_prompt, decode_exact, splice
from models_app.services.engine.stops import StopMatcher
from tests.chat.conftest import (
    RecordingLayer,
    assert_well_formed,
    chat_request,
    deltas_text,
    run_generate,
)
from tests.factories import make_snapshot

pytestmark = pytest.mark.django_db


def words(n: int, start: int = 0) -> str:
    vocabulary = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "the",
        "lazy",
        "dog",
        "while",
        "a",
        "robot",
        "reads",
        "a",
        "tiny",
        "book",
    ]
    return " ".join(vocabulary[(start + i) % len(vocabulary)] for i in range(n))


def test_it_streams_ordered_deltas_then_done(engine, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    request = chat_request(tiny_snapshot.id, options={"temperature": 0, "max_tokens": 12})
    usage, messages = run_generate(engine, request)
    assert_well_formed(messages)
    started, done = messages[0], messages[-1]
    assert started["type"] == "chat.started" and started["model"] == "test/tiny-chat"
    assert started["prompt_tokens"] == usage["prompt_tokens"] > 0
    assert done["type"] == "chat.done"
    assert done["text"] == deltas_text(messages) != ""
    assert done["finish_reason"] == "length"
    assert usage["completion_tokens"] == 12
    assert usage["ttft_ms"] > 0 and usage["tokens_per_second"] > 0 and usage["peak_memory_bytes"] > 0
    assert [m["tokens"] for m in messages if m["type"] == "chat.delta"][-1] == 12


def test_chat_started_travels_with_the_first_text(engine, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    """One channel-layer message for both: chat.started sent alone took CPU from the prefill it announces."""
    layer = RecordingLayer()
    request = chat_request(tiny_snapshot.id, options={"temperature": 0, "max_tokens": 12})
    engine.generate(request, layer=layer)
    first = layer.sent[0][1]
    assert first["type"] == inference.BUNDLE and first["request_id"] == request["request_id"]
    assert [(m["type"], m["seq"]) for m in first["messages"][:2]] == [("chat.started", 0), ("chat.delta", 1)]
    assert_well_formed(layer.messages(request["request_id"]))


def test_every_completion_writes_a_usage_row_and_the_answer(engine, tiny_snapshot, alice) -> None:  # type: ignore[no-untyped-def]
    from models_app.models import Conversation

    conversation = Conversation.objects.create(user=alice)
    answer = Message.objects.create(conversation=conversation, role="assistant", status="pending")
    request = chat_request(
        tiny_snapshot.id, user_id=alice.id, source="browser", assistant_message_id=answer.id
    )
    usage, messages = run_generate(engine, request)
    row = Usage.objects.get(request_id=request["request_id"])
    assert (row.user, row.snapshot_id, row.source) == (alice, tiny_snapshot.id, "browser")
    assert (row.prompt_tokens, row.completion_tokens, row.finish_reason) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
        "length",
    )
    assert row.ttft_ms and row.tokens_per_second and row.peak_memory_bytes
    answer.refresh_from_db()
    assert answer.status == "complete" and answer.content == deltas_text(messages)
    assert answer.completion_tokens == usage["completion_tokens"] and answer.ttft_ms == usage["ttft_ms"]
    tiny_snapshot.refresh_from_db()
    assert tiny_snapshot.last_used_at is not None


def test_max_tokens_defaults_to_the_rest_of_the_context(engine, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    usage, messages = run_generate(engine, chat_request(tiny_snapshot.id, options={"temperature": 0}))
    started = messages[0]
    assert started["max_tokens"] == 512 - started["prompt_tokens"]
    # The tiny model never emits EOS, so it fills the window.
    assert usage["completion_tokens"] == started["max_tokens"]
    assert usage["finish_reason"] == "length"


def test_a_seed_makes_sampling_reproducible(engine, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    options = {
        "temperature": 1.0,
        "top_p": 0.9,
        "top_k": 50,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "seed": 7,
        "max_tokens": 20,
    }
    texts = [
        run_generate(engine, chat_request(tiny_snapshot.id, options=options))[1][-1]["text"] for _ in "ab"
    ]
    assert texts[0] == texts[1]
    other = run_generate(engine, chat_request(tiny_snapshot.id, options={**options, "seed": 8}))[1][-1][
        "text"
    ]
    assert other != texts[0]


def test_it_stops_at_eos(engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from devkit.tinymodel import tiny_model_dir

    snapshot = make_snapshot("test/tiny-eos", path=tiny_model_dir(tmp_path, eos_bias=True))
    usage, messages = run_generate(engine, chat_request(snapshot.id, options={"max_tokens": 50}))
    assert messages[-1]["finish_reason"] == "stop"
    assert usage["completion_tokens"] < 50
    assert "<|im_end|>" not in messages[-1]["text"]


# --- Stop strings ------------------------------------------------------------------------------------------


def test_stop_matcher_withholds_what_could_start_a_stop_string() -> None:
    matcher = StopMatcher(["<END>", "###"])
    assert matcher.feed("Hello <") == "Hello "
    assert matcher.feed("E") == ""
    assert matcher.feed("X") == "<EX"  # not a stop string after all
    assert matcher.feed("ok #") == "ok "
    assert matcher.feed("#") == ""
    assert matcher.feed("# and more") == ""
    assert matcher.stopped
    assert matcher.flush() == ""


def test_stop_matcher_releases_a_partial_match_at_the_end() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("go ST") == "go "
    assert matcher.flush() == "ST"


def test_stop_matcher_takes_the_earliest_stop_string() -> None:
    matcher = StopMatcher(["bc", "a"])
    assert matcher.feed("xxbca") == "xx"


# --- Log probability entries and the text they belong to ----------------------------------------------------


def _entry(text: str | bytes) -> dict:  # type: ignore[type-arg]
    raw = text if isinstance(text, bytes) else text.encode()
    return {"token": raw.decode(errors="replace"), "bytes": list(raw)}


def test_an_entry_goes_out_with_the_text_of_its_own_token() -> None:
    """mlx-lm's BPE detokenizer gives a token's text one step late: the entry waits for it."""
    release = LogprobRelease()
    release.add(_entry("Hello"))
    assert release.shown("") == []
    release.add(_entry(" world"))
    assert [e["token"] for e in release.shown("Hello")] == ["Hello"]
    assert [e["token"] for e in release.shown(" world")] == [" world"]
    assert release.finish(stopped=False) == []


def test_half_a_character_waits_for_the_other_half() -> None:
    release = LogprobRelease()
    release.add(_entry(b"\xc3"))  # the first byte of "é"
    assert release.shown("") == []
    release.add(_entry(b"\xa9"))
    assert [e["bytes"] for e in release.shown("é")] == [[0xC3], [0xA9]]


def test_a_stop_string_keeps_the_token_it_starts_in_and_drops_the_ones_inside() -> None:
    release = LogprobRelease()
    shown = []
    for token, visible in (("one", "one"), (" tw", " t"), ("o th", ""), ("ree", "")):
        release.add(_entry(token))
        shown += release.shown(visible)  # the stop string "wo three" was met in " tw" + "o th"
    shown += release.finish(stopped=True)
    assert [e["token"] for e in shown] == ["one", " tw"]


def test_stop_strings_never_reach_the_reader(engine, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    options = {"temperature": 0, "max_tokens": 40}
    full = run_generate(engine, chat_request(tiny_snapshot.id, options=options))[1][-1]["text"]
    stop = full[15:19]
    expected = full[: full.index(stop)]
    usage, messages = run_generate(
        engine, chat_request(tiny_snapshot.id, options={**options, "stop": [stop]})
    )
    assert_well_formed(messages)
    assert messages[-1]["finish_reason"] == "stop"
    assert messages[-1]["text"] == deltas_text(messages) == expected
    assert stop not in deltas_text(messages)
    assert usage["completion_tokens"] < 40


# --- The context window ----------------------------------------------------------------------------------


def conversation(turns: int, words_per_message: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i}: {words(words_per_message, i)}"})
        messages.append({"role": "assistant", "content": f"answer {i}: {words(words_per_message, i + 3)}"})
    messages.append({"role": "user", "content": "last question: what now?"})
    return messages


def test_context_trimming_drops_the_oldest_turns_and_says_so(engine, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    messages = conversation(turns=6, words_per_message=40)
    request = chat_request(tiny_snapshot.id, messages, options={"temperature": 0, "max_tokens": 16})
    usage, replies = run_generate(engine, request)
    started = replies[0]
    assert started["type"] == "chat.started"
    assert "oldest messages were left out" in started["notice"]
    assert started["prompt_tokens"] <= 512 - 16
    assert replies[-1]["type"] == "chat.done" and usage["completion_tokens"] == 16

    tokenizer = engine.state().registry.get(engine.spec_for(tiny_snapshot.id)).tokenizer
    prompt = build_chat_prompt(tokenizer, messages, context_length=512, reserve=16)
    text = tokenizer.decode(prompt.tokens)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.")  # the system prompt stays
    assert "last question: what now?" in text
    assert "question 0:" not in text  # the oldest turn went first
    # Whole turns only: the first message after the system prompt is a question.
    assert text.split("<|im_start|>")[2].startswith("user\n")
    assert prompt.dropped_messages % 2 == 0 and started["notice"].startswith(
        f"The {prompt.dropped_messages} "
    )


def test_a_message_that_cannot_fit_is_context_too_long(engine, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": words(600)}]
    usage, replies = run_generate(engine, chat_request(tiny_snapshot.id, messages))
    assert usage is None
    assert [m["type"] for m in replies] == ["chat.error"]
    assert replies[0]["code"] == "context_too_long" and replies[0]["seq"] == 0
    assert "context window is 512 tokens" in replies[0]["message"]


def test_a_raw_prompt_is_completed_without_the_chat_template(engine, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    request = chat_request(tiny_snapshot.id, messages=None, prompt="Once upon a time")
    del request["messages"]
    usage, replies = run_generate(engine, request)
    assert replies[-1]["type"] == "chat.done"
    tokenizer = engine.state().registry.get(engine.spec_for(tiny_snapshot.id)).tokenizer
    assert usage["prompt_tokens"] == len(tokenizer.encode("Once upon a time"))  # no <|im_start|>user wrapping


# --- The prompt cache -----------------------------------------------------------------------------------


def test_turn_five_processes_only_its_new_tokens(engine, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    """Each follow-up reuses the KV cache of the turn before, the answer as the model generated it included
    (an API client sends the answer back as text; the prompt cache recognises it): only the end of that turn,
    the new question and the generation prompt go through the model."""
    tokenizer = engine.state().registry.get(engine.spec_for(tiny_snapshot.id)).tokenizer
    messages = [{"role": "system", "content": "Be brief."}]
    previous: dict | None = None
    for turn in range(5):
        question = f"turn {turn}: {words(12, turn)}"
        messages.append({"role": "user", "content": question})
        usage, replies = run_generate(
            engine,
            chat_request(tiny_snapshot.id, list(messages), options={"temperature": 0, "max_tokens": 10}),
        )
        if previous is None:
            assert usage["cached_tokens"] == 0
        else:
            assert usage["cached_tokens"] == previous["prompt_tokens"] + previous["completion_tokens"]
            # The new turn as the template writes it after the answer: <|im_end|>, the question, the
            # generation prompt.
            new_text = f"<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
            assert usage["prompt_tokens"] - usage["cached_tokens"] == len(
                tokenizer.encode(new_text, add_special_tokens=False)
            )
        previous = usage
        messages.append({"role": "assistant", "content": replies[-1]["text"]})
    assert turn == 4


def test_a_spliced_prompt_spells_exactly_what_the_template_writes(engine, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    """The previous turn keeps its ids, the rest is encoded: decoded, the prompt is the template's text."""
    tokenizer = engine.state().registry.get(engine.spec_for(tiny_snapshot.id)).tokenizer
    first = [{"role": "user", "content": "hello there"}]
    prompt = tokenizer.apply_chat_template(first, add_generation_prompt=True)
    # An answer in ids the tokenizer would not choose itself: one character at a time.
    answer = "the quick fox"
    answer_ids = [tokenizer.encode(c, add_special_tokens=False)[0] for c in answer]
    assert answer_ids != tokenizer.encode(answer, add_special_tokens=False)
    second = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "and then?"}]
    text = tokenizer.apply_chat_template(second, add_generation_prompt=True, tokenize=False)
    spliced = splice(tokenizer, text, prompt + answer_ids)
    assert spliced is not None and spliced[: len(prompt) + len(answer_ids)] == prompt + answer_ids
    assert decode_exact(tokenizer, spliced) == text
    # A history that does not start with those tokens' text (an edited answer) is not spliced.
    edited = [
        *first,
        {"role": "assistant", "content": "the slow fox"},
        {"role": "user", "content": "and then?"},
    ]
    edited_text = tokenizer.apply_chat_template(edited, add_generation_prompt=True, tokenize=False)
    assert splice(tokenizer, edited_text, prompt + answer_ids) is None


def test_an_answer_whose_first_space_the_stream_dropped_is_still_reused(engine, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    """mlx-lm's streaming detokenizer drops the space that starts an answer's first token: the client gets
    "the the", the model wrote " the the". The next turn still starts with the tokens the model wrote."""
    tokenizer = engine.state().registry.get(engine.spec_for(tiny_snapshot.id)).tokenizer
    [spaced] = tokenizer.encode(" the", add_special_tokens=False)
    options = {"temperature": 0, "max_tokens": 6, "logit_bias": {str(spaced): 100}}
    messages = [{"role": "user", "content": "hello there"}]
    first, replies = run_generate(engine, chat_request(tiny_snapshot.id, messages, options=options))
    answer = replies[-1]["text"]
    assert answer.startswith("the") and first["completion_tokens"] == 6
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "and then?"}]
    second, _ = run_generate(engine, chat_request(tiny_snapshot.id, messages, options={"max_tokens": 2}))
    assert second["cached_tokens"] == first["prompt_tokens"] + first["completion_tokens"]


def test_an_edited_history_is_encoded_afresh(engine, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    tokenizer = engine.state().registry.get(engine.spec_for(tiny_snapshot.id)).tokenizer
    options = {"temperature": 0, "max_tokens": 6}
    first = [{"role": "user", "content": "hello there"}]
    usage, _ = run_generate(engine, chat_request(tiny_snapshot.id, first, options=options))
    edited = [
        *first,
        {"role": "assistant", "content": "not what it said"},
        {"role": "user", "content": "so?"},
    ]
    again, _ = run_generate(engine, chat_request(tiny_snapshot.id, edited, options=options))
    assert again["prompt_tokens"] == len(tokenizer.apply_chat_template(edited, add_generation_prompt=True))
    assert again["cached_tokens"] < usage["prompt_tokens"] + usage["completion_tokens"]


def test_a_previous_turn_must_be_token_ids_and_text(engine, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    bad = {"ids": ["<|im_start|>", 3], "text": "<|im_start|>"}
    usage, replies = run_generate(engine, chat_request(tiny_snapshot.id, previous_turn=bad))
    assert usage is None and replies[-1]["code"] == "invalid_request"
    # Ids the model does not have are not used (and nothing fails).
    unknown = {"ids": [10**9], "text": "<|im_start|>"}
    usage, replies = run_generate(engine, chat_request(tiny_snapshot.id, previous_turn=unknown))
    assert usage is not None and usage["cached_tokens"] == 0


def test_a_regenerated_answer_reuses_the_prompt(engine, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    request = chat_request(tiny_snapshot.id, options={"temperature": 0, "max_tokens": 10})
    first, _ = run_generate(engine, request)
    again, _ = run_generate(engine, {**request, "request_id": "00000000-0000-4000-8000-000000000001"})
    assert first["cached_tokens"] == 0
    assert again["cached_tokens"] == again["prompt_tokens"] - 1  # one token must go through the model


def test_another_conversation_does_not_steal_the_cache(engine, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    system = {"role": "system", "content": f"Shared instructions: {words(60)}"}
    a = [system, {"role": "user", "content": "first conversation"}]
    b = [system, {"role": "user", "content": "second conversation, different"}]
    options = {"temperature": 0, "max_tokens": 5}
    run_generate(engine, chat_request(tiny_snapshot.id, a, options=options))
    shared, _ = run_generate(engine, chat_request(tiny_snapshot.id, b, options=options))
    assert shared["cached_tokens"] > 60  # the shared system prompt
    again, _ = run_generate(engine, chat_request(tiny_snapshot.id, a, options=options))
    assert again["cached_tokens"] == again["prompt_tokens"] - 1  # a's own cache is still whole


# --- Failures and cancellation ----------------------------------------------------------------------------


def test_a_model_that_fails_to_load(engine, broken_model_path, alice) -> None:  # type: ignore[no-untyped-def]
    from models_app.models import Conversation

    snapshot = make_snapshot("test/broken", path=broken_model_path)
    answer = Message.objects.create(
        conversation=Conversation.objects.create(user=alice), role="assistant", status="pending"
    )
    usage, replies = run_generate(engine, chat_request(snapshot.id, assistant_message_id=answer.id))
    assert usage is None
    assert [(m["type"], m["code"], m["seq"]) for m in replies] == [("chat.error", "model_load_failed", 0)]
    assert "test/broken could not be loaded" in replies[0]["message"]
    answer.refresh_from_db()
    assert answer.status == "error" and "could not be loaded" in answer.error
    assert not Usage.objects.exists()


def test_a_snapshot_that_is_not_ready_is_not_loaded(engine, tiny_model_path) -> None:  # type: ignore[no-untyped-def]
    snapshot = make_snapshot("test/tiny-chat", path=tiny_model_path, status="downloading")
    _, replies = run_generate(engine, chat_request(snapshot.id))
    assert replies[0]["code"] == "model_load_failed" and "not ready" in replies[0]["message"]


def test_the_snapshot_row_is_checked_before_a_model_is_loaded(tiny_model_path) -> None:  # type: ignore[no-untyped-def]
    """spec_for reads its columns in one plain statement (state._SPEC_SQL): the same answers as the rows say
    (the markers it fills: tests/cache/test_markers.py)."""
    from models_app.models import Snapshot
    from models_app.services.engine.registry import ModelLoadError
    from models_app.services.engine.state import spec_for

    ready = make_snapshot("test/spec-ready", path=tiny_model_path)
    spec = spec_for(ready.id)
    assert (spec.snapshot_id, spec.repo_id, spec.path) == (ready.id, "test/spec-ready", str(tiny_model_path))
    elsewhere = make_snapshot("test/spec-elsewhere", path=tiny_model_path)
    Snapshot.objects.filter(id=elsewhere.id).update(node="another-machine")
    for snapshot_id, message in [
        (elsewhere.id, "test/spec-elsewhere is on node another-machine, not on this one"),
        (make_snapshot("test/spec-deleted", status=Snapshot.Status.DELETED).id, "is not ready (deleted)"),
        (10**9, "This model is no longer registered."),
    ]:
        with pytest.raises(ModelLoadError, match=re.escape(message)):
            spec_for(snapshot_id)


def test_a_request_cancelled_while_queued_never_starts(engine, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    request = chat_request(tiny_snapshot.id)
    inference.cancel_generation(request["request_id"])
    usage, replies = run_generate(engine, request)
    assert usage is None
    assert [(m["type"], m["code"]) for m in replies] == [("chat.error", "cancelled")]


# The generation runs in another thread, with its own database connection: the rows must be committed.
@pytest.mark.django_db(transaction=True)
def test_cancel_stops_the_token_loop(engine, slow_model_path) -> None:  # type: ignore[no-untyped-def]
    snapshot = make_snapshot("test/slow", path=slow_model_path)
    request = chat_request(snapshot.id, options={"temperature": 0, "max_tokens": 5000})
    layer = RecordingLayer()
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(usage=engine.generate(request, layer=layer)))
    thread.start()
    deadline = time.monotonic() + 60
    while not any(m["type"] == "chat.delta" for m in layer.messages()) and time.monotonic() < deadline:
        time.sleep(0.01)
    inference.cancel_generation(request["request_id"])
    thread.join(60)
    replies = layer.messages()
    assert_well_formed(replies)
    done = replies[-1]
    assert done["type"] == "chat.done" and done["finish_reason"] == "cancelled"
    assert done["usage"]["completion_tokens"] < 5000
    assert done["text"] == deltas_text(replies)


def test_options_are_validated() -> None:
    assert inference.normalize_options({"temperature": "0.5", "top_k": 40, "stop": "END", "seed": None}) == {
        "temperature": 0.5,
        "top_k": 40,
        "stop": ["END"],
    }
    assert inference.normalize_options({"keep_alive": "5m"})["keep_alive"] == 300
    assert inference.normalize_options({"keep_alive": -1})["keep_alive"] == -1
    for bad in (
        {"temperature": -1},
        {"top_k": 1.5},
        {"max_tokens": 0},
        {"stop": [1]},
        {"temperature": True},
        {"keep_alive": "soon"},
        {"top_p": "nan"},
    ):
        with pytest.raises(inference.InvalidOptions):
            inference.normalize_options(bad)


def test_keep_alive_zero_unloads_the_model_after_the_request(engine, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    run_generate(engine, chat_request(tiny_snapshot.id, options={"max_tokens": 4, "keep_alive": 0}))
    assert tiny_snapshot.id not in engine.state().registry
    run_generate(engine, chat_request(tiny_snapshot.id, options={"max_tokens": 4, "keep_alive": "10m"}))
    [status] = engine.state().registry.status()
    assert status["expires_at"] == pytest.approx(time.time() + 600, abs=5)


def test_the_worker_status_reports_backend_and_loaded_models(engine, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    run_generate(engine, chat_request(tiny_snapshot.id))
    status = engine.worker_status()
    assert status["mlx"]["device"].startswith("Device(") and status["mlx"]["version"]
    assert status["mlx"]["memory_limit"] > 0
    [model] = status["loaded_models"]
    assert model["snapshot_id"] == tiny_snapshot.id and model["repo_id"] == "test/tiny-chat"
    assert model["memory_bytes"] > 0 and model["idle_seconds"] >= 0 and model["expires_at"] > time.time()
    assert status["busy_since"] is None


def test_a_long_prompt_reports_its_progress(engine, long_context_model_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A prompt that takes a while (PROGRESS_INTERVAL, here a millisecond: on a fast machine the tiny model's
    ~2,000 tokens went through in under the 0.25 s of the product, and no progress was due)."""
    from models_app.services.engine import alone, batch

    monkeypatch.setattr(batch, "PROGRESS_INTERVAL", 0.001)
    monkeypatch.setattr(alone, "PROGRESS_INTERVAL", 0.001)
    snapshot = make_snapshot("test/long-context", path=long_context_model_path)
    messages = [{"role": "user", "content": words(800)}]  # about 2,000 tokens: four prefill steps
    usage, replies = run_generate(engine, chat_request(snapshot.id, messages, options={"max_tokens": 4}))
    assert_well_formed(replies)
    kinds = [m["type"] for m in replies]
    assert kinds[0] == "chat.started" and "chat.progress" in kinds
    assert kinds.index("chat.progress") < kinds.index("chat.delta")
    progress = [m for m in replies if m["type"] == "chat.progress"]
    assert all(0 < m["processed"] < m["total"] == usage["prompt_tokens"] for m in progress)
    assert [m["processed"] for m in progress] == sorted(m["processed"] for m in progress)


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "hi"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "the quick brown fox"},
            {"role": "assistant", "content": " jumps over"},
            {"role": "user", "content": "<|im_start|> and then?"},
        ],
    ],
)
def test_a_prompt_is_the_tokens_apply_chat_template_gives(engine, tiny_snapshot, messages) -> None:  # type: ignore[no-untyped-def]
    """The template is rendered once and its text encoded: the same ids as apply_chat_template(tokenize=True)."""
    tokenizer = engine.state().registry.get(engine.spec_for(tiny_snapshot.id)).tokenizer
    prompt = build_chat_prompt(tokenizer, messages, context_length=4096, reserve=16)
    assert prompt.tokens == tokenizer.apply_chat_template(messages, add_generation_prompt=True)


def test_progress_never_reports_a_whole_prompt_however_slow_the_machine(  # type: ignore[no-untyped-def]
    engine, long_context_model_path, monkeypatch
) -> None:
    """CI (PostgreSQL run, a loaded machine) saw a progress frame after the last prompt chunk, processed ==
    total. With the interval at 0, every chunk's progress goes out, as it does on a slow enough machine."""
    from models_app.services.engine import alone, batch

    monkeypatch.setattr(batch, "PROGRESS_INTERVAL", 0.0)
    monkeypatch.setattr(alone, "PROGRESS_INTERVAL", 0.0)
    snapshot = make_snapshot("test/long-context", path=long_context_model_path)
    messages = [{"role": "user", "content": words(800)}]
    usage, replies = run_generate(engine, chat_request(snapshot.id, messages, options={"max_tokens": 4}))
    progress = [m for m in replies if m["type"] == "chat.progress"]
    assert progress and all(0 < m["processed"] < m["total"] == usage["prompt_tokens"] for m in progress)


@pytest.mark.parametrize("options", [{}, {"seed": 7}], ids=["batched", "alone"])
def test_the_worker_logs_where_a_request_was_when(engine, tiny_snapshot, caplog, options) -> None:  # type: ignore[no-untyped-def]
    """LOG_HOPS: one debug line per request with the web side's stamps and the worker's, in the order the
    request passed them (`make bench` reads it for its hop table)."""
    import json
    import logging

    caplog.set_level(logging.DEBUG, logger=inference.HOPS_LOG)
    request = chat_request(
        tiny_snapshot.id,
        options={"temperature": 0, "max_tokens": 4, **options},
        hops={"received": time.time_ns()},
    )
    inference.stamp_hop(request, "enqueue")
    run_generate(engine, request)
    lines = [r.getMessage() for r in caplog.records if r.name == inference.HOPS_LOG]
    assert len(lines) == 1 and lines[0].startswith(f"request {request['request_id']} hops ")
    hops = json.loads(lines[0].split(" hops ", 1)[1])
    order = ["received", "enqueue", "picked", "engine", "prefill", "first_token", "first_sent"]
    assert list(hops) == order
    assert [hops[name] for name in order] == sorted(hops.values())
