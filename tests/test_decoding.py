"""Decoding: seeded sampling, top-k / top-p filters, stop strings, speculative decoding, the cascade."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from tiny_models import tiny_llava

import edgemfm
from edgemfm.cascade_bench import bench_cascade
from edgemfm.cli import main
from edgemfm.errors import InputError
from edgemfm.runtimes.cascade import Calibration, calibrate, choose, choose_threshold, normalize
from edgemfm.runtimes.decoding import Sampler, stop_at
from edgemfm.runtimes.prompt_lookup import lookup
from edgemfm.runtimes.selftests import Scores, score
from edgemfm.runtimes.speculative import Costs

PROMPT = "Describe the picture."


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    """A tiny LLaVA sharing the default model's byte tokenizer: the draft and the cascade's small bundle."""
    checkpoint = tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava-1", seed=1)
    return edgemfm.export(
        edgemfm.ExportConfig(model=checkpoint, device="host", out=tmp_path_factory.mktemp("bundles") / "tiny-host")
    )


def test_top_k_and_top_p_keep_the_expected_tokens():
    logits = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))
    assert np.count_nonzero(Sampler(1.0, top_k=2).probabilities(logits)) == 2
    kept = Sampler(1.0, top_p=0.8).probabilities(logits)  # 0.5 + 0.2 < 0.8 <= 0.5 + 0.2 + 0.15
    assert np.nonzero(kept)[0].tolist() == [0, 1, 2] and abs(kept.sum() - 1) < 1e-12
    assert abs(kept[0] - 0.5 / 0.85) < 1e-12


def test_sampling_frequencies_follow_the_distribution():
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    sampler = Sampler(1.0, seed=0)
    counts = np.bincount([sampler(logits) for _ in range(4000)], minlength=3) / 4000
    assert np.abs(counts - [0.6, 0.3, 0.1]).max() < 0.03


def test_seeded_sampling_repeats_and_differs_from_greedy(default_bundle, picture):
    pipe = edgemfm.load(default_bundle)
    run = lambda seed: list(  # noqa: E731
        pipe.generate_tokens(PROMPT, images=[picture], max_new_tokens=16, temperature=1.0, top_p=0.95, seed=seed)
    )
    greedy = list(pipe.generate_tokens(PROMPT, images=[picture], max_new_tokens=16))
    assert run(7) == run(7) and run(7) != run(8) and run(7) != greedy


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -1.0}, "temperature -1.0 is not allowed; allowed: 0"),
        ({"top_k": -2}, "top-k -2 is not allowed"),
        ({"top_p": 1.5}, r"top-p 1.5 is not allowed; allowed: a number in \(0, 1\]"),
    ],
)
def test_bad_sampling_options_are_named(kwargs, message):
    with pytest.raises(InputError, match=message):
        Sampler(**kwargs)


def test_stop_strings_end_the_answer_across_pieces():
    assert "".join(stop_at(["ab", "c\nUS", "ER: x"], ["\nUSER:"])) == "abc"
    assert "".join(stop_at(["abc", "def"], ["zz"])) == "abcdef"
    assert list(stop_at(["STOP", "more"], ["STOP"])) == []


def test_cli_stop_string_truncates_the_answer(default_bundle, picture, capsys):
    pipe = edgemfm.load(default_bundle)
    full = "".join(pipe.generate(PROMPT, images=[picture], max_new_tokens=24))
    stop = full[10:12]
    assert (
        main(
            [
                "run",
                str(default_bundle),
                "--prompt",
                PROMPT,
                "--image",
                str(picture),
                "--max-new-tokens",
                "24",
                "--stop",
                stop,
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == full[: full.index(stop)]


def test_speculative_decoding_gives_the_targets_greedy_tokens(default_bundle, small_bundle, picture):
    alone = list(edgemfm.load(default_bundle).generate_tokens(PROMPT, images=[picture], max_new_tokens=40))
    for draft, accepted in ((small_bundle, None), (default_bundle, "all")):
        pipe = edgemfm.load(default_bundle, draft=draft, draft_k=4)
        assert list(pipe.generate_tokens(PROMPT, images=iter([picture]), max_new_tokens=40)) == alone
        s = pipe.speculation
        assert s["proposed"] > 0 and s["target_calls"] < len(alone)
        if accepted == "all":  # the target as its own draft: every proposal passes, k + 1 tokens per target call
            assert s["accepted"] == s["proposed"] and s["target_calls"] <= math.ceil(len(alone) / 5)
    assert len(alone) == 40


def test_measured_costs_choose_the_k_that_pays():
    costs = Costs()
    assert costs.choose(8) == 0  # nothing measured: one plain step first
    costs.observe("target", 1, 0.045)
    assert costs.choose(8) == 8  # then the most, to measure the draft and a long check
    costs.observe("target", 9, 0.065)
    costs.observe("draft", 8, 8 * 0.002)
    for _ in range(20):
        costs.record(8, 8)
    assert costs.choose(8) == 8  # a cheap, right draft: propose the most
    costs.observe("draft", 1, 0.2)
    for _ in range(100):
        costs.record(8, 0)
    assert costs.choose(8) == 0  # a slow, wrong one: plain steps
    assert abs(costs.check_seconds(5) - 0.055) < 1e-12  # between the measured 1 and 9 tokens


def test_the_first_proposal_and_the_ones_after_it_are_rated_apart():
    """A draft that mixes sources (a lookahead head's one token, prompt lookup's runs where the answer loops):
    its first proposals are often wrong, the ones after an accepted one seldom. Rated apart, k is longer than
    one pooled rate makes it (the demo's int4 target's costs, ms)."""
    costs = Costs()
    costs.target.update({1: 0.0044, 2: 0.0046, 5: 0.0060, 9: 0.0096})
    costs.draft = 0.00012
    for accepted in [0] * 12 + [1] * 8:
        costs.record(1, accepted)  # the head's one token
    for accepted in [5] * 3 + [3] * 4 + [0] * 3:
        costs.record(5, accepted)  # a lookup's run of five
    assert costs.first == [30, 15] and costs.after == [24, 20]
    assert costs.choose(8) == 4
    pooled = (35 + 1) / (35 + 19 + 2)  # one rate: 35 accepted proposals, 19 rounds ended by a rejected one
    seconds = [costs.draft * k + costs.check_seconds(k + 1) for k in range(9)]
    assert int(np.argmax(np.cumsum(pooled ** np.arange(9)) / seconds)) == 3


def test_a_draft_that_does_not_pay_is_probed_with_one_token_now_and_then():
    """A draft measured slow or wrong is tried again after PROBE_EVERY plain steps, with one proposal:
    the probe re-measures it for one draft step and a 2-token check, not the most (8 and a 9-token check)."""
    costs = Costs()
    costs.observe("target", 1, 0.009)
    costs.observe("target", 9, 0.028)
    costs.observe("draft", 1, 0.004)
    for accepted in [1] + [0] * 20:
        costs.record(1, accepted)
    chosen = [costs.choose(8) for _ in range(2 * (Costs.PROBE_EVERY + 1))]
    assert chosen.count(0) == len(chosen) - 2  # plain steps ...
    assert [k for k in chosen if k] == [1, 1]  # ... and a one-token probe every PROBE_EVERY + 1 calls
    assert chosen.index(1) == Costs.PROBE_EVERY


def test_a_draft_that_pays_still_takes_a_plain_step_now_and_then():
    """A single step's cost is measured on plain steps only: one every PROBE_EVERY + 1 calls keeps it current,
    so a first, inflated measurement cannot keep a draft that does not pay proposing for good."""
    costs = Costs()
    costs.observe("target", 1, 0.012)  # a cold first step
    costs.observe("target", 2, 0.010)
    costs.observe("draft", 1, 0.003)
    for accepted in [1, 0] * 10:
        costs.record(1, accepted)
    chosen = [costs.choose(1) for _ in range(Costs.PROBE_EVERY + 1)]
    assert chosen == [1] * Costs.PROBE_EVERY + [0]  # proposing, then one plain step ...
    for _ in range(20):
        costs.observe("target", 1, 0.008)  # ... measures the step as it is now
    assert costs.choose(1) == 0  # 0.008 a token alone against (0.003 + 0.010) / 1.5: the draft does not pay


def test_a_draft_catches_up_on_plain_steps_before_it_proposes(default_bundle, picture):
    """After plain steps the draft reads the target's tokens it missed first (outside a proposal's measured
    cost), then proposes: the target as its own draft, so every proposal of a draft in step is accepted."""
    alone = list(edgemfm.load(default_bundle).generate_tokens(PROMPT, images=[picture], max_new_tokens=30))
    pipe = edgemfm.load(default_bundle, draft=default_bundle)
    script = iter([0, 0, 0, 2, 0, 3, 0, 0, 0, 0, 1] + [0] * 30)
    pipe.speculation_costs.choose = lambda most: next(script)
    assert list(pipe.generate_tokens(PROMPT, images=[picture], max_new_tokens=30)) == alone
    s = pipe.speculation
    assert s["proposed"] == 6 and s["accepted"] == 6  # a draft out of step would propose other tokens


def test_a_draft_with_the_targets_encoders_reads_the_targets_encoded_media(default_bundle, small_bundle, picture):
    pipe = edgemfm.load(default_bundle, draft=default_bundle)  # the same encoder files (a decoder-only draft)
    assert pipe.draft.pipe.encoder_cache is pipe.encoder_cache
    list(pipe.generate_tokens(PROMPT, images=[picture], max_new_tokens=4))
    stats = pipe.stats().encoder_cache
    assert (stats.misses, stats.hits) == (1, 1)  # the target encoded the picture; the draft found its rows
    other = edgemfm.load(default_bundle, draft=small_bundle)  # another model's tower: its own rows
    assert other.draft.pipe.encoder_cache is not other.encoder_cache


def test_prompt_lookup_proposes_what_followed_the_first_match():
    assert lookup([7, 1, 2, 3, 4, 9, 1, 2], n=2) == [3, 4]
    assert lookup([1, 2, 3, 4, 2, 3], n=5, ngram=3) == [4, 2, 3]  # 2-gram "2 3", first occurrence
    assert lookup([5, 6, 8, 1, 6], n=3, ngram=3) == [8, 1, 6]  # only the last token matches
    assert lookup([1, 2, 3], n=4) == [] and lookup([], n=4) == []


def test_adaptive_and_prompt_drafts_give_the_targets_greedy_tokens(default_bundle, small_bundle, picture, capsys):
    prompt = "Repeat after me: the red circle is left of the blue square."
    alone = list(edgemfm.load(default_bundle).generate_tokens(prompt, images=[picture], max_new_tokens=40))
    for draft in (small_bundle, "prompt"):
        pipe = edgemfm.load(default_bundle, draft=draft)  # k chosen from measured costs
        for answer in range(2):  # the second answer starts from the first one's measured costs
            assert list(pipe.generate_tokens(prompt, images=[picture], max_new_tokens=40)) == alone
            s = pipe.speculation
            assert s["target_calls"] == len(s["k"]) and 1 in s["target_ms"]
            assert all(0 <= k <= pipe.draft.k for k in s["k"])
            # with nothing measured yet the draft is always tried; later the measured (load-dependent) costs decide
            assert s["proposed"] > 0 or answer == 1
    args = ["run", str(default_bundle), "--prompt", prompt, "--image", str(picture), "--max-new-tokens", "40"]
    assert main([*args, "--draft", "prompt"]) == 0
    captured = capsys.readouterr()
    assert (
        captured.out.strip() == edgemfm.load(default_bundle).tokenizer.decode(alone, skip_special_tokens=True).strip()
    )
    assert "draft accepted" in captured.err


def test_speculative_decoding_refuses_sampling_and_bad_k(default_bundle, small_bundle):
    pipe = edgemfm.load(default_bundle, draft=small_bundle)
    with pytest.raises(InputError, match="needs greedy decoding; temperature 0.5 is not allowed"):
        pipe.generate_tokens("hi", temperature=0.5)
    assert main(["run", str(default_bundle), "--prompt", "hi", "--draft", str(small_bundle), "--draft-k", "0"]) == 2


def test_cascade_answers_small_unless_the_self_test_fails(default_bundle, small_bundle, picture, capsys):
    small = list(edgemfm.load(small_bundle).generate_tokens(PROMPT, images=[picture], max_new_tokens=12))
    large = list(edgemfm.load(default_bundle).generate_tokens(PROMPT, images=[picture], max_new_tokens=12))
    assert small != large
    for threshold, who, want in ((-math.inf, "small", small), (0.5, "large", large)):
        cascade = edgemfm.load_cascade(default_bundle, small_bundle, escalate_below=threshold)
        assert list(cascade.generate_tokens(PROMPT, images=[picture], max_new_tokens=12)) == want
        assert cascade.answered_by == who and cascade.score <= 0
    score = cascade.score  # the small answer's mean log-probability: a threshold just above it escalates
    cascade = edgemfm.load_cascade(default_bundle, small_bundle, escalate_below=score + 1e-6)
    assert list(cascade.generate_tokens(PROMPT, images=[picture], max_new_tokens=12)) == large
    assert (
        main(
            [
                "run",
                str(default_bundle),
                "--prompt",
                PROMPT,
                "--image",
                str(picture),
                "--cascade",
                str(small_bundle),
                "--escalate-below=-1e9",
            ]
        )
        == 0
    )
    assert "answered by the small bundle" in capsys.readouterr().err


def test_threshold_choice_escalates_least_within_tolerance():
    # (small's mean log-prob, small right, large right): confident answers are right, unsure ones wrong
    rows = [
        (-0.1, True, True),
        (-0.2, True, False),
        (-0.5, True, True),
        (-1.5, False, True),
        (-2.0, False, True),
        (-3.0, False, False),
    ]
    c = choose_threshold(rows, tolerance=0.01)
    assert c.threshold == -1.5 and c.escalated == 2 / 6  # the two below -1.5: escalating one more is not needed
    assert c.cascade_accuracy == 4 / 6 == c.large_accuracy and c.small_accuracy == 3 / 6
    strict = choose_threshold(rows, tolerance=-1 / 6)  # asking for one more right answer than large alone
    assert strict.threshold == -0.5 and strict.escalated == 0.5 and strict.cascade_accuracy == 5 / 6
    assert choose_threshold([(-1.0, False, True)], tolerance=0.0).escalated == 1.0


def test_calibration_round_trips_and_drives_the_cascade(default_bundle, small_bundle, picture, tmp_path):
    large = edgemfm.load(default_bundle)
    questions = ["What is it?", "Colours?", "Count the shapes."]
    items = [
        {"question": q, "answer": "".join(large.generate(q, [picture], max_new_tokens=6)), "images": [picture]}
        for q in questions
    ]
    c = calibrate(edgemfm.load(small_bundle), large, items, max_new_tokens=6)
    assert c.questions == 3 and c.large_accuracy == 1.0 and c.cascade_accuracy >= 0.99
    c.save(tmp_path / "cascade.json")
    assert Calibration.read(tmp_path / "cascade.json") == c
    cascade = edgemfm.load_cascade(default_bundle, small_bundle, escalate_below=tmp_path / "cascade.json")
    assert cascade.threshold == c.threshold


def test_a_calibration_against_the_large_bundle_escalates_where_the_small_one_is_unsure_even_if_it_wins(
    default_bundle, small_bundle, picture, tmp_path
):
    small, large = edgemfm.load(small_bundle), edgemfm.load(default_bundle)
    questions = [PROMPT, "What is it?", "Colours?", "Count the shapes."]
    # reference answers that are the small bundle's own: against them it beats the large one, so nothing escalates
    items = [
        {"question": q, "answer": "".join(small.generate(q, [picture], max_new_tokens=6)), "images": [picture]}
        for q in questions
    ]
    wins = calibrate(small, large, items, max_new_tokens=6, tolerance=0.0, against="answers")
    assert (wins.against, wins.small_accuracy, wins.escalated) == ("answers", 1.0, 0.0) and wins.large_accuracy < 1.0
    # against the large bundle's answers (no reference needed): at most one of the four answered otherwise
    unlabeled = [{"question": q, "images": [picture]} for q in questions]
    c = calibrate(small, large, unlabeled, max_new_tokens=6, tolerance=0.25)
    assert (c.against, c.large_accuracy) == ("large", 1.0) and c.cascade_accuracy >= 0.75 and c.escalated > 0
    c.save(tmp_path / "cascade.json")
    cascade = edgemfm.load_cascade(default_bundle, small_bundle, escalate_below=tmp_path / "cascade.json")
    escalated, differ = 0, 0
    for q in questions:
        want = list(large.generate_tokens(q, images=[picture], max_new_tokens=6))
        got = list(cascade.generate_tokens(q, images=[picture], max_new_tokens=6))
        assert (cascade.answered_by == "large") == (cascade.score < c.threshold)
        if cascade.answered_by == "large":
            assert got == want  # token for token the large bundle's answer
        escalated += cascade.answered_by == "large"
        differ += normalize(large.tokenizer.decode(got)) != normalize(large.tokenizer.decode(want))
    assert escalated / len(questions) == c.escalated and differ / len(questions) <= 0.25
    with pytest.raises(InputError, match="has no answer; allowed: an item with one, or against='large'"):
        calibrate(small, large, unlabeled, max_new_tokens=6, against="answers")
    with pytest.raises(InputError, match="calibration against 'key' is not allowed; allowed: large, answers"):
        calibrate(small, large, items, max_new_tokens=6, against="key")


def test_each_self_test_escalates_below_its_threshold_and_escalated_answers_are_the_large_ones(
    default_bundle, small_bundle, picture
):
    small = edgemfm.load(small_bundle)
    want_small, scores = score(small.generate_steps(PROMPT, [picture], (), 12))
    large = list(edgemfm.load(default_bundle).generate_tokens(PROMPT, images=[picture], max_new_tokens=12))
    assert want_small != large and scores.min_logprob <= scores.mean_logprob <= 0
    for test in ("mean_logprob", "min_logprob", "first_margin"):
        s = getattr(scores, test)
        for on_demand in (False, True):
            for threshold, who, want in ((s, "small", want_small), (s + 1e-6, "large", large)):
                cascade = edgemfm.load_cascade(
                    default_bundle, small_bundle, escalate_below=threshold, self_test=test, on_demand=on_demand
                )
                # token for token: the small answer when its score reaches the threshold, else the large bundle's
                assert list(cascade.generate_tokens(PROMPT, images=[picture], max_new_tokens=12)) == want
                answer = cascade.answer(PROMPT, images=[picture], max_new_tokens=12)
                assert (cascade.answered_by, answer.answered_by, answer.score) == (who, who, s)


def test_a_first_token_test_escalates_before_the_small_bundle_decodes_further(default_bundle, small_bundle, picture):
    small = edgemfm.load(small_bundle)
    tokens, scores = score(small.generate_steps(PROMPT, [picture], (), 12))
    large = list(edgemfm.load(default_bundle).generate_tokens(PROMPT, images=[picture], max_new_tokens=12))
    assert len(tokens) > 2 and tokens != large
    fed = {}
    for test in ("first_margin", "mean_logprob", "min_logprob"):
        cascade = edgemfm.load_cascade(
            default_bundle, small_bundle, escalate_below=getattr(scores, test) + 1e-6, self_test=test
        )
        # escalated either way, token for token the large bundle's answer
        assert list(cascade.generate_tokens(PROMPT, images=[picture], max_new_tokens=12)) == large
        assert (cascade.answered_by, cascade.score) == ("large", getattr(scores, test))
        fed[test] = cascade.small.stats().decoder_positions
    # the margin's escalation fed the small decoder the prompt alone; the mean log-probability's, every answer token too
    # (the last one to find the end of turn after it)
    assert len(tokens) < 12 and fed["mean_logprob"] - fed["first_margin"] == len(tokens)
    # the least sure token's: the prompt and the tokens before the one that fell below the threshold
    small_logprobs = [lp for _, lp in small.generate_scored(PROMPT, [picture], (), 12)]
    first_below = next(i for i, lp in enumerate(small_logprobs) if lp < scores.min_logprob + 1e-6)
    assert fed["min_logprob"] == fed["first_margin"] + first_below


def test_the_calibration_picks_the_self_test_that_escalates_least():
    # the first token's margin separates right from wrong answers; the mean log-probability does not
    rows = [
        (Scores(-0.1, -0.1, 5.0), True, True),
        (Scores(-0.9, -1.5, 4.0), True, True),
        (Scores(-0.2, -0.3, 0.5), False, True),
        (Scores(-0.8, -1.2, 3.0), True, True),
    ]
    c = choose(rows, tolerance=0.0)
    assert (c.test, c.threshold, c.escalated, c.cascade_accuracy) == ("first_margin", 3.0, 0.25, 1.0)
    assert choose(rows, tolerance=0.0, tests=["mean_logprob"]).escalated == 0.75
    # one-token answers: the mean and the least sure token's log-probability tie; the latter fails an answer sooner
    ones = [(Scores(s.min_logprob, s.min_logprob, 0.1), sr, lr) for s, sr, lr in rows]
    assert choose(ones, tolerance=0.0).test == "min_logprob"
    with pytest.raises(InputError, match="unknown self-test 'entropy'; allowed: mean_logprob, min_logprob"):
        choose(rows, 0.0, tests=["entropy"])


def test_calibration_files_name_their_self_test(tmp_path):
    old = tmp_path / "old.json"  # written before there were other self-tests: no "test" key
    old.write_text(
        '{"threshold": -1.0, "questions": 2, "small_accuracy": 0.5, "large_accuracy": 1.0, '
        '"cascade_accuracy": 1.0, "escalated": 0.5}'
    )
    assert (Calibration.read(old).test, Calibration.read(old).against) == ("mean_logprob", "answers")
    bad = tmp_path / "bad.json"
    bad.write_text(old.read_text().replace("}", ', "test": "entropy"}'))
    with pytest.raises(InputError, match="unknown self-test 'entropy'"):
        Calibration.read(bad)


def test_bench_cascade_reports_who_answered_time_and_memory(default_bundle, small_bundle, picture, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "p.png").write_bytes(picture.read_bytes())
    large = edgemfm.load(default_bundle)
    questions = ("What is it?", "Colours?")
    answers = ["".join(large.generate(q, [picture], max_new_tokens=6)) for q in questions]
    lines = [json.dumps({"image": "p.png", "prompt": q, "answer": a}) for q, a in zip(questions, answers)]
    (data / "eval.jsonl").write_text("\n".join(lines * 2) + "\n")  # the test half: the 2nd and 4th
    for on_demand, threshold in ((False, math.inf), (True, math.inf), (False, -math.inf)):
        r = bench_cascade(default_bundle, small_bundle, threshold, data, on_demand=on_demand, max_new_tokens=6)
        assert r.questions == 2 and r.mode == ("on_demand" if on_demand else "resident")
        assert [a.answered_by for a in r.answers] == ["large" if threshold > 0 else "small"] * 2
        assert r.peak_rss_mib > 0 and r.cascade_s > 0 and r.load_s > 0
        if threshold > 0:  # every question escalated: the large bundle's answers, all right
            assert r.escalated == 1.0 and r.cascade_accuracy == 1.0
            assert [a.text for a in r.answers] == [answers[1], answers[1]]
        assert (r.large_s is None) == on_demand and (on_demand or r.large_accuracy == 1.0)


def test_bench_calibrates_a_cascade_on_held_out_questions(default_bundle, small_bundle, picture, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "p.png").write_bytes(picture.read_bytes())
    questions = (PROMPT, "What is it?", "Colours?", "Count the shapes.")
    lines = [json.dumps({"image": "p.png", "prompt": q, "answer": "-"}) for q in questions]
    (data / "eval.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "cascade.json"
    argv = ["bench", str(default_bundle), "--cascade", str(small_bundle), "--data", str(data), "--calibrate", str(out)]
    assert main([*argv, "--half", "all", "--tolerance", "0"]) == 0
    assert "calibrated on 4 questions: escalate below" in capsys.readouterr().out
    c = Calibration.read(out)  # against the large bundle's answers: the reference ("-") is never read
    assert (c.questions, c.against, c.large_accuracy, c.cascade_accuracy) == (4, "large", 1.0, 1.0)
    assert main([*argv, "--against", "answers"]) == 0  # the calibration half: the 1st and 3rd; "-" is never right
    assert (Calibration.read(out).questions, Calibration.read(out).against) == (2, "answers")
    assert main([*argv, "--tolerance", "2"]) == 2
    assert "--tolerance: 2.0 is not allowed; allowed: a finite number from 0 to 1" in capsys.readouterr().err


def test_a_checked_proposal_gives_the_greedy_answer_and_a_right_one_costs_the_prefill_alone(default_bundle, picture):
    pipe = edgemfm.load(default_bundle)
    before = pipe.stats().decoder_calls
    want = list(pipe.generate_tokens(PROMPT, images=[picture], max_new_tokens=12))
    # the prompt's calls: a step follows each token but the limit's (it finds the next one, or the end of turn)
    prefill = pipe.stats().decoder_calls - before - min(len(want), 11)
    assert len(want) > 2 and prefill >= 1
    wrong = [want[0], (want[1] + 1) % 256, *want[2:]]
    for proposal in ([], want, want[:2], wrong, want + [want[0]], [(want[0] + 1) % 256], want[:1] * 20):
        for limit in (12, 2, 1, 0):
            before = pipe.stats().decoder_calls
            got = [t for t, _ in pipe.generate_checked(PROMPT, [picture], (), proposal, max_new_tokens=limit)]
            assert got == want[:limit]  # greedy decoding's tokens whatever was proposed
            if proposal == want and limit == 12:
                assert pipe.stats().decoder_calls - before == prefill  # the proposal rode in the prompt's calls


def test_an_escalated_question_checks_the_small_answer_in_the_large_prefill(default_bundle, small_bundle, picture):
    large = edgemfm.load(default_bundle)
    want = list(large.generate_tokens(PROMPT, images=[picture], max_new_tokens=12))
    calls = {}
    # the large bundle as its own small one: its answer is proposed whole and right
    for small, test in (
        (default_bundle, "mean_logprob"),
        (small_bundle, "mean_logprob"),
        (default_bundle, "first_margin"),
    ):
        cascade = edgemfm.load_cascade(default_bundle, small, escalate_below=math.inf, self_test=test)
        assert list(cascade.generate_tokens(PROMPT, images=[picture], max_new_tokens=12)) == want
        assert cascade.answered_by == "large"
        calls[small == default_bundle, test] = cascade.large.stats().decoder_calls
    # a right whole proposal: no step; a wrong one, or the first token alone: the large bundle's steps as usual
    steps = min(len(want), 11)  # a step after each token but the limit's
    assert calls[True, "mean_logprob"] + steps == calls[False, "mean_logprob"] == calls[True, "first_margin"] + 1
