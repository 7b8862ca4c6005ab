"""Chat messages -> liked / rejected items, exclusions and year filters, on the bundled catalog.

The catalog is built in memory from the bundled item titles (made-up semantic IDs, no text
encoder): title resolution reads titles only.
"""

from __future__ import annotations

import random
import re
import time

import pytest

from genrec.decoding.conversation import (
    TitleIndex,
    YearRange,
    message_text,
    NEGATIONS,
    normalize,
    parse_years,
    read_conversation,
    render_answer,
    title_year,
)
from genrec.data import load_bundled
from genrec.tokenization.catalog import Catalog


@pytest.fixture(scope="module")
def index() -> TitleIndex:
    items = load_bundled().items
    titles = items["title"].astype(str).tolist()
    codes = [(i // 256, i % 256) for i in range(len(titles))]
    return TitleIndex(Catalog(items["item_id"].astype(str).tolist(), codes, [256, 256], titles, titles))


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
        ("Titanic (1997)", True),
        ("The Dark Knight (2008)", False),
    ]


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
    second = read_conversation(
        [
            {"role": "user", "content": "I loved Inception and The Prestige"},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "not that one, and I hated Titanic. Something older?"},
        ],
        index,
    )
    assert set(recs) <= set(second.exclude) and set(first.liked) <= set(second.exclude)
    assert _titles(index, second.rejected) == ["Titanic (1997)"] and c.index("0120338") in second.exclude
    # "older" is relative to what was just shown
    shown_years = sorted(index.years[r] for r in recs)
    assert second.years.high is not None and second.years.high < shown_years[len(shown_years) // 2] + 1
    allowed = second.allow(index.years)
    assert allowed and all(index.years[r] <= second.years.high for r in allowed)


def _reference_negated(norm: str, start: int) -> bool:
    clause = " ".join(norm[:start].split(" ")[-6:]) + " "
    for sep in (" but ", " and ", " or ", " loved ", " liked ", " enjoyed "):
        if sep in " " + clause:
            clause = (" " + clause).rsplit(sep, 1)[1]
    return any(neg in " " + clause for neg in (" " + n for n in NEGATIONS))


def _reference_find(index: TitleIndex, text: str) -> list[tuple[int, int, int, bool]]:
    """The former matcher (every title tried at every position): the new one must agree with it."""
    norm = normalize(text)
    padded = f" {norm} "
    taken: list[tuple[int, int]] = []
    found = []
    for key in index.keys:
        start = padded.find(f" {key} ")
        while start >= 0:
            s, e = start, start + len(key)
            if not any(s < te and ts < e for ts, te in taken):
                if not index._short(key) or re.search(rf"\b{re.escape(key.capitalize())}\b", text):
                    taken.append((s, e))
                    found.append((index._pick(key, padded[e + 1 : e + 12]), s, e, _reference_negated(norm, s)))
            start = padded.find(f" {key} ", start + 1)
    return sorted(found, key=lambda m: m[1])


def test_the_linear_matcher_finds_what_trying_every_title_found(index):
    rng = random.Random(0)
    titles = [t for t in index.catalog.titles if t]
    fillers = ["I loved", "not", "but", "and", "the", "Heat", "heat", "(1995)", "hated", "&", "dark", "knight", "rises"]
    for _ in range(300):
        parts = [rng.choice(titles) if rng.random() < 0.4 else rng.choice(fillers) for _ in range(rng.randint(1, 12))]
        bits = [p.split("(")[0] if rng.random() < 0.5 else p for p in parts]
        text = " ".join(bits)
        got = [(m.row, m.start, m.end, m.negated) for m in index.find(text)]
        assert got == _reference_find(index, text), text


@pytest.mark.parametrize(
    "unit",
    [
        "I loved Inception ",  # the request that froze the server (issue 19): 11,377 mentions in 200 KB
        "Heat ",  # a short title, checked against the written words once, not once per mention
        "not Titanic and ",  # negations look back a few words, not at the whole text
        "[id: 0468569 ",  # unclosed answer tags
        "before " + " " * 50,  # year phrases over long runs of spaces
    ],
)
def test_reading_a_huge_message_takes_linear_time(index, unit):
    text = unit * (1_000_000 // len(unit))  # 1 MB: the quadratic matcher took hours
    started = time.perf_counter()
    req = read_conversation([{"role": "assistant", "content": text}, {"role": "user", "content": text}], index)
    assert time.perf_counter() - started < 20
    if unit.startswith("I loved"):
        assert _titles(index, req.liked) == ["Inception (2010)"]


def test_content_parts_and_odd_contents():
    assert message_text([{"type": "text", "text": "I loved"}, {"type": "text", "text": "Heat"}]) == "I loved Heat"
    assert message_text(None) == "" and message_text(42) == "" and message_text({"text": "x"}) == ""
