"""Chat messages -> liked / rejected items, exclusions and year filters, on the bundled catalog."""

from __future__ import annotations

import pytest

from genrec.serving.conversation import (TitleIndex, YearRange, normalize, parse_years, read_conversation,
                                         render_answer, title_year)
from genrec.tokenization.stage import load_catalog


@pytest.fixture(scope="module")
def index(demo_run) -> TitleIndex:
    return TitleIndex(load_catalog(demo_run))


def _titles(index, rows):
    return [index.catalog.titles[r] for r in rows]


def test_titles_in_free_text_resolve_to_catalog_items(index):
    found = index.find("I loved Inception and The Prestige; something lighter?")
    assert _titles(index, [m.row for m in found]) == ["Inception (2010)", "The Prestige (2006)"]
    assert not any(m.negated for m in found)
    # the longest title wins over a title it contains, and case/punctuation do not matter
    found = index.find("what about the dark knight rises!")
    assert _titles(index, [m.row for m in found]) == ["The Dark Knight Rises (2012)"]
    assert index.find("nothing here at all, really") == []


def test_negated_titles_are_rejections(index):
    found = index.find("not Titanic, but I liked The Dark Knight")
    assert [(index.catalog.titles[m.row], m.negated) for m in found] == [
        ("Titanic (1997)", True), ("The Dark Knight (2008)", False)]


def test_year_wishes():
    assert parse_years("anything before 1990?", []) == YearRange(high=1989)
    assert parse_years("from the 80s please", []) == YearRange(1980, 1989)
    assert parse_years("something from the 1970s", []) == YearRange(1970, 1979)
    assert parse_years("something older", [2010, 2012, 2014]) == YearRange(high=2011)
    assert parse_years("more recent ones", [1990, 2000]) == YearRange(low=1996)
    assert not parse_years("something lighter", [2010])
    assert title_year("Heat (1995)") == 1995 and title_year("no year") is None
    assert normalize("Amélie & Co.") == "am lie and co"


def test_later_turns_exclude_what_was_recommended_or_mentioned(index):
    c = index.catalog
    first = read_conversation([{"role": "user", "content": "I loved Inception and The Prestige"}], index)
    assert _titles(index, first.liked) == ["Inception (2010)", "The Prestige (2006)"]
    recs = [c.index("0468569"), 0, 1]  # The Dark Knight and the two oldest films
    answer = render_answer(c, recs, first.liked, YearRange())
    assert "Since you liked Inception (2010) and The Prestige (2006)" in answer
    second = read_conversation([
        {"role": "user", "content": "I loved Inception and The Prestige"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "not that one, and I hated Titanic. Something older?"},
    ], index)
    assert set(recs) <= set(second.exclude) and set(first.liked) <= set(second.exclude)
    assert _titles(index, second.rejected) == ["Titanic (1997)"] and c.index("0120338") in second.exclude
    # "older" is relative to what was just shown
    shown_years = sorted(index.years[r] for r in recs)
    assert second.years.high is not None and second.years.high < shown_years[len(shown_years) // 2] + 1
    allowed = second.allow(index.years)
    assert allowed and all(index.years[r] <= second.years.high for r in allowed)
