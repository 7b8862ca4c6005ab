"""The documentation cannot drift from the code: README length, generated pages, the README's
Python example, the headline results table and the links between the pages."""

from __future__ import annotations

import re
import shutil
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import quality  # noqa: E402  (bench/ is scripts, not a package)

README = REPO / "README.md"
DOCS = REPO / "docs"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail into docs/"


def test_configuration_page_is_generated_from_the_config():
    from genrec.config import config_markdown

    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert page == config_markdown(), (
        "docs/configuration.md is out of date: run `genrec config docs > docs/configuration.md`"
    )


def test_results_page_is_generated_from_the_results_file():
    rows = quality.load_rows(quality.RESULTS)
    assert (DOCS / "results.md").read_text(encoding="utf-8") == quality.markdown(rows), (
        "docs/results.md is out of date: run `.venv/bin/python bench/quality.py`"
    )


def test_readme_headline_table_is_the_recorded_rows():
    rows = quality.load_rows(quality.RESULTS)
    table = "\n".join(quality.headline(rows))
    assert table, "no row of bench/results/results.jsonl is marked headline"
    assert table in README.read_text(encoding="utf-8"), (
        "README's results table differs from `.venv/bin/python bench/quality.py --headline`"
    )


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = _python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) == 1, "the README should hold exactly one ```python block: its runnable example"
    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "demo.yaml", tmp_path / "configs" / "demo.yaml")
    monkeypatch.chdir(tmp_path)
    # no time limit here: a timed assertion fails on a busy machine, not on a slow example
    exec(compile(blocks[0], str(README), "exec"), {"__name__": "__readme_example__"})
    out = capsys.readouterr().out
    assert "recall@10" in out and "ndcg@10" in out
    assert (tmp_path / "runs" / "api-example" / "tokenize").is_dir()


_LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", ["README.md", *sorted(f"docs/{p.name}" for p in DOCS.glob("*.md"))])
def test_local_links_resolve(page):
    path = REPO / page
    text = path.read_text(encoding="utf-8")
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{page} links to {target}, which does not exist"
        if anchor.startswith("row-"):
            assert f'id="{anchor}"' in dest.read_text(encoding="utf-8"), f"{page}: no anchor #{anchor} in {file}"
        elif anchor and dest.suffix == ".md":
            slugs = {
                re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.*)$", dest.read_text(encoding="utf-8"), flags=re.M)
            }
            assert anchor in slugs, f"{page}: no heading for #{anchor} in {file}"
