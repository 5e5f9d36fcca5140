"""Threads: a Pipeline shared by two threads gives the serial answers; a Cascade keeps each
question's decision (which bundle, its score, its tokenizer) to that question; a long soak does not leak."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import edgemfm
from edgemfm.runtimes import budget
from edgemfm.runtimes.cascade import Cascade

PROMPTS = ["What is in the picture?", "Describe the colours.", "hi", "Count the shapes."]


def _in_threads(fn, args_list):
    results = [None] * len(args_list)

    def work(i, args):
        results[i] = fn(*args)

    threads = [threading.Thread(target=work, args=(i, a)) for i, a in enumerate(args_list)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_threads_on_one_pipeline_give_the_serial_answers(default_bundle, picture):
    pipe = edgemfm.load(default_bundle)

    def ask(prompt):
        return list(pipe.generate_tokens(prompt, images=[picture], max_new_tokens=8))

    serial = [ask(p) for p in PROMPTS]
    threaded = _in_threads(ask, [(p,) for p in PROMPTS])  # four questions, interleaving on two cores
    assert threaded == serial


class _Tokenizer:
    def __init__(self, name):
        self.name = name

    def decode(self, ids, skip_special_tokens=True):
        return "".join(f"{self.name}{i}." for i in ids)


class _Stub:
    """A pipeline whose answer's confidence is set by the prompt; `small` waits at a barrier so the
    two threads' questions are decided one after the other before either is decoded."""

    def __init__(self, name, barrier=None):
        self.tokenizer, self.barrier = _Tokenizer(name), barrier

    def generate_steps(self, prompt, images, audio, max_new_tokens, sampler):
        confident = prompt == "easy"
        logits = np.array([5.0, 0.0]) if confident else np.array([0.0, 0.0])
        yield 0, logits
        if self.barrier is not None:
            self.barrier.wait(timeout=30)
        yield 0, logits

    def generate_checked(self, prompt, images, audio, proposal, max_new_tokens):  # an escalation: greedy, the same
        return self.generate_steps(prompt, images, audio, max_new_tokens, None)


def test_cascade_keeps_each_questions_decision_and_tokenizer(tmp_path):
    barrier = threading.Barrier(2)
    cascade = Cascade(_Stub("small", barrier), _Stub("large"), escalate_below=-0.1)

    def ask(prompt):
        answer = cascade.answer(prompt, max_new_tokens=2)
        return answer, cascade.answered_by

    (easy, easy_last), (hard, hard_last) = _in_threads(ask, [("easy",), ("hard",)])
    assert (easy.answered_by, easy_last, easy.text) == ("small", "small", "small0.small0.")
    assert (hard.answered_by, hard_last, hard.text) == ("large", "large", "large0.large0.")
    assert easy.score > -0.1 > hard.score


@pytest.mark.slow
def test_300_calls_do_not_grow_the_process(default_bundle, picture):
    pipe = edgemfm.load(default_bundle)
    for _ in range(20):  # warm up: allocator arenas and caches reach their steady size
        list(pipe.generate_tokens("hi", images=[picture], max_new_tokens=4))
    before = budget.resident_bytes()
    for i in range(300):
        list(pipe.generate_tokens(PROMPTS[i % len(PROMPTS)], images=[picture], max_new_tokens=4))
    grown = budget.resident_bytes() - before
    assert grown < 16 * 2**20, f"resident memory grew {grown / 2**20:.1f} MiB over 300 calls"
