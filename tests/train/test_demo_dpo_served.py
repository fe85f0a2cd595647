"""The shipped DPO adapter `concise` changes what the model generates, not only how it scores pairs: through
the real server, on held-out prompts it never trained on, `loradock eval` finds it ahead of the base and of the
prompted base on its metric (right answer in <= 25 words), with much shorter answers, and no forgetting."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.engine, pytest.mark.train]


def test_concise_beats_base_and_prompted_base_without_forgetting(cli, server, tmp_path):
    out = tmp_path / "concise.json"
    result = cli("eval", "--data", REPO / "data" / "concise_dpo_eval.jsonl", "--adapter", "concise",
                 "--server", server.url, "--api-key", server.api_key, "--output", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    base, prompted, adapter = (report["approaches"][k] for k in ("base", "prompted", "adapter"))
    assert adapter["total"] == 70
    # Measured with the demo server: 48/70 vs 26/70 prompted vs 17/70 base; median words 8 vs 25 vs 62.5.
    assert adapter["passed"] >= prompted["passed"] + 10 and adapter["passed"] >= base["passed"] + 15, report
    assert adapter["median_words"] * 2 <= prompted["median_words"] < base["median_words"], report
    assert not report["forgetting"]["forgot"], report["forgetting"]


def test_concise_answers_the_issues_probes_briefly(client, server):
    """The two prompts the review used: the base rambles to the 120-token limit; `concise` stops early."""
    for prompt in ("Give me three tips for learning Python.", "Explain how a rainbow forms."):
        usage = {m: client.chat.completions.create(model=m, messages=[{"role": "user", "content": prompt}],
                                                   temperature=0, max_tokens=120).usage.completion_tokens
                 for m in (server.base, "concise")}
        assert usage["concise"] * 3 <= usage[server.base], (prompt, usage)
