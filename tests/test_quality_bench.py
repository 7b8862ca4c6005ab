"""The quality results (bench/results/results.jsonl) and their generator (bench/quality.py).

Every measured row lives in the committed results file, so no row depends on a run folder that
is gone; the generator validates every row, rejects a malformed one by its line, and writes the
same page from the same rows every time."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import quality  # noqa: E402  (bench/ is scripts, not a package)


@pytest.fixture(scope="module")
def rows():
    return quality.load_rows(quality.RESULTS)


def _first_measured_row() -> dict:
    lines = quality.RESULTS.read_text(encoding="utf-8").splitlines()
    return next(row for row in map(json.loads, lines) if not row["published"])


def test_every_row_is_complete(rows):
    for r in rows:
        where = f"results.jsonl line {r['n']}"
        assert r["metrics"], where
        if r["published"]:
            assert r["command"] is None and r["users"] is None, where
            continue
        assert r["command"] and r["commit"] and r["cpu"], where
        if r["user_sample"] != "all":  # "2000 users, seed 0" scored 2,000 users
            assert int(r["user_sample"].split()[0]) == r["users"], where
        for name, m in r["metrics"].items():
            assert (m["sd"] is None) == (len(r["seeds"]) < 2), (where, name)


def test_recorded_numbers_reach_the_page(rows):
    page = quality.markdown(rows)
    best = next(r for r in rows if r["headline"] and r["system"].startswith("genrec"))
    assert f"{best['metrics']['ndcg@10']['mean']:.4f}" in page
    assert "0.0439 ± 0.0005" in page  # SASRec-CE over three seeds, 2,000 users
    for r in rows:  # every row has its table line and its recipe
        assert f"[{r['n']}](#row-{r['n']})" in page
        assert f'<details id="row-{r["n"]}">' in page
        if r["command"]:
            assert r["command"].splitlines()[-1] in page


def test_generation_is_deterministic_and_checkable(tmp_path):
    out = tmp_path / "results.md"
    argv = ["--out", str(out), "--no-plot"]
    assert quality.main(["--check", *argv]) == 1  # missing page: out of date
    assert quality.main(argv) == 0
    first = out.read_text(encoding="utf-8")
    assert quality.main(argv) == 0 and out.read_text(encoding="utf-8") == first
    assert quality.main(["--check", *argv]) == 0
    out.write_text(first.replace("0.0421", "0.0999"), encoding="utf-8")
    assert quality.main(["--check", *argv]) == 1


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop("command"), "missing field 'command'"),
        (lambda r: r.update(protocol="seen items sometimes"), "protocol must be one of"),
        (lambda r: r.update(user_sample="some users"), "user_sample must be"),
        (lambda r: r["metrics"].update({"ndcg@10": {"mean": "high", "sd": None}}), "no numeric mean"),
        (lambda r: r["metrics"].update({"hit@10": {"mean": 0.1, "sd": None}}), "unknown metric"),
        (lambda r: r.update(commit=None), "needs 'commit'"),
        (lambda r: r.update(extra=1), "unknown field"),
    ],
)
def test_a_malformed_row_is_rejected_by_its_line(tmp_path, change, message, capsys):
    good = _first_measured_row()
    assert not good["published"]
    bad = json.loads(json.dumps(good))
    change(bad)
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(quality.RowError, match=message) as e:
        quality.load_rows(path)
    assert "line 2" in str(e.value)
    assert quality.main(["--results", str(path), "--out", str(tmp_path / "r.md"), "--no-plot"]) == 2
    assert "line 2" in capsys.readouterr().err


def test_plot_draws(rows, tmp_path):
    quality.plot(rows, tmp_path / "q.png")
    assert (tmp_path / "q.png").stat().st_size > 10_000


def test_a_sampled_evaluation_is_named_and_never_headline():
    """bench/headline.py names a `genrec evaluate --max-users` output by its sample, which
    bench/quality.py accepts and shows as sampled: a sampled row can never pass for an all-user one."""
    import headline  # noqa: PLC0415  (bench/ is scripts, not a package)

    everyone = {"users": 22363, "max_users": 0, "user_sample_seed": 0}
    assert headline._sample(everyone) == "all"
    assert headline._sample({**everyone, "max_users": 30000}) == "all"  # a cap above the split samples none
    sampled = {"users": 4000, "max_users": 4000, "user_sample_seed": 0}
    assert headline._sample(sampled) == "4000 users, seed 0"
    row = {**_first_measured_row(), "user_sample": headline._sample(sampled), "users": 4000, "headline": False}
    quality.validate(row, "row")
    assert "sampled" in quality.fmt_users(row)


def test_a_row_gains_seeds_collected_in_a_later_sitting(tmp_path):
    """runs/ is scratch: `headline.py collect --with-recorded` joins the seeds a row already holds
    (its per_seed numbers) to the seeds collected now, for the same config only."""
    import headline  # noqa: PLC0415  (bench/ is scripts, not a package)

    def seed(s: int, ndcg: float) -> dict:
        return {"seed": s, "metrics": {"ndcg@10": ndcg}, "minutes": 90.0, "commit": f"c{s}", "note": f"seed {s}"}

    row = {**_first_measured_row(), "seeds": [0, 1], "per_seed": [seed(0, 0.04), seed(1, 0.05)]}
    quality.validate(row, "row")  # per_seed is a known field
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    key = (row["dataset"], row["system"], row["protocol"], row["user_sample"])

    merged = headline.with_recorded_seeds([seed(2, 0.06)], key, row["config"], path)
    assert [e["seed"] for e in merged] == [0, 1, 2]
    again = headline.with_recorded_seeds([seed(1, 0.07)], key, row["config"], path)
    assert [e["metrics"]["ndcg@10"] for e in again] == [0.04, 0.07]  # a seed collected now replaces its record
    assert headline.with_recorded_seeds([seed(0, 0.1)], ("X", *key[1:]), row["config"], path) == [seed(0, 0.1)]
    with pytest.raises(SystemExit, match="seeds of different configs do not average"):
        headline.with_recorded_seeds([seed(2, 0.06)], key, row["config"] + " with x=1", path)
    path.write_text(json.dumps({**row, "per_seed": []}) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="keeps no per-seed numbers"):
        headline.with_recorded_seeds([seed(2, 0.06)], key, row["config"], path)
    with pytest.raises(quality.RowError, match="per_seed holds seeds"):
        quality.validate({**row, "seeds": [0, 1, 2]}, "row")
