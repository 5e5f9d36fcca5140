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
