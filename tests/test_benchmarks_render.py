"""BENCHMARKS.md is generated from benchmarks/results/*.json: the committed file is what the renderer gives,
and every table in it names the commit and the command that produced it."""

import json
import re

from benchmarks import render  # the repository's root is on sys.path under `python -m pytest` (the README's command)


def test_benchmarks_md_is_what_the_results_render_to():
    assert render.TARGET.read_text() == render.render(), "BENCHMARKS.md was edited by hand: python -m benchmarks.render"


def test_every_table_names_its_commit_and_command():
    for name in render.SECTIONS:
        for block in json.loads((render.RESULTS / f"{name}.json").read_text())["blocks"]:
            if "table" in block or "from" in block:
                assert re.fullmatch(r"[0-9a-f]{7}", block["commit"]), (name, block.get("commit"))
                assert block["command"].strip(), name
    text = render.TARGET.read_text()
    tables = re.findall(r"\n((?:\|.*\|\n)+)\n(.*)", text)
    assert len(tables) >= 30
    for _, line in tables:
        assert re.match(r"<sub>commit [0-9a-f]{7}: `.+`</sub>$", line), line


def test_record_rows_render_as_a_table():
    report = {"rows": [{"bundle": "demo-host", "tokens_per_s": 25.2}, {"bundle": "demo-int4", "tokens_per_s": 39.2}]}
    assert render.rows(report, "decode_speed").splitlines() == [
        "| bundle | tokens_per_s |",
        "|---|---|",
        "| demo-host | 25.2 |",
        "| demo-int4 | 39.2 |",
    ]


def test_a_recorded_result_is_a_section_of_its_own(tmp_path, monkeypatch):
    report = {"name": "decode_speed", "title": "Decode speed", "command": "python -m benchmarks.runtime.decode_speed b"}
    report |= {"commit": "abc1234", "rows": [{"bundle": "b", "best_tok_s": 25.2}]}
    (tmp_path / "decode_speed.json").write_text(json.dumps(report))
    monkeypatch.setattr(render, "SECTIONS", ("decode_speed",))
    text = render.render(tmp_path)
    assert "## Decode speed\n\n```bash\npython -m benchmarks.runtime.decode_speed b\n```" in text
    assert "| b | 25.2 |\n\n<sub>commit abc1234: `python -m benchmarks.runtime.decode_speed b`</sub>" in text


def test_the_cascade_row_shows_the_median_ratio_of_repeated_runs_and_their_range():
    from benchmarks.runtime.cascade import table_rows

    head = {"small": "s", "small_mib": 1.0, "large": "l", "large_mib": 2.0, "small_accuracy": 0.9}
    head |= {"large_accuracy": 0.95, "cascade_accuracy": 0.95, "escalated": 0.1, "self_test": "min_logprob"}
    head |= {"threshold": -0.2, "calibrated_against": "large", "small_cpu_ms": 1.0}
    head["large_cpu_ms"] = 3.0
    run = {"escalated": 0.1, "cascade_accuracy": 0.95, "peak_rss_mib": 900, "rss_after_mib": 800, "load_s": 1.0}

    def timed(cascade, large, load):
        cpu = None if large is None else large / 2
        return (
            run
            | {"cascade_s": cascade, "cascade_cpu_s": cascade / 2, "large_s": large, "large_cpu_s": cpu}
            | {"load_average": load}
        )

    resident = [timed(0.62, 1.0, "8.1 -> 8.5"), timed(0.5, 1.0, "8.5 -> 8.0"), timed(0.6, 1.0, "8.0 -> 7.9")]
    rows = table_rows(head | {"timed": {"resident": resident, "on_demand": [timed(1.2, None, "7.9 -> 7.8")]}})
    assert rows[0]["cascade / large"] == "0.60 (0.60): median of 3 runs, range 0.50-0.62 (0.50-0.62)"
    assert rows[0]["cascade ms per question (CPU ms)"] == "600 (300)"
    assert rows[0]["load average"] == "8.1 -> 8.5; 8.5 -> 8.0; 8.0 -> 7.9"
    assert rows[1]["cascade / large"] == "-"
    assert table_rows(head | {"timed": {"resident": resident[:1]}})[0]["cascade / large"] == "0.62 (0.62)"
