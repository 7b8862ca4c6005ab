"""Conversational recommendation: from chat messages to a history, exclusions and filters.

The model ranks items from a history of item IDs (and, when trained with the
``conversational`` task, from liked titles in text). A chat turn such as "I loved
Inception and The Prestige; something older?" is turned into that input here:

* titles mentioned by the user are resolved to catalog rows (:class:`TitleIndex`);
  titles under a negation ("not Titanic", "I hated Cats") are rejections, not likes;
* items the assistant already recommended (listed in its earlier messages with their
  ids, as :func:`render_answer` writes them) and rejected items are excluded, so a
  later turn ("not that one", "something else") never repeats them;
* "older", "newer", "before 1995", "from the 80s" become a year range over the years in
  the catalog's titles, applied as an allow-list inside decoding.

Nothing here needs the model or vLLM; the server and the conversational evaluation use it.
"""

from __future__ import annotations

import re
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from genrec.tokenization.catalog import Catalog

_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")
# no "[" inside an id: an unclosed "[id: " must not scan to the end of the text for each one
_ANSWER_LINE = re.compile(r"\[id: ([^\[\]]+)\]")
#: words before a title that make it a rejection ("not Titanic", "I hated Cats")
NEGATIONS = (
    "not ",
    "no ",
    "never ",
    "didn't like",
    "did not like",
    "don't like",
    "do not like",
    "hated ",
    "hate ",
    "disliked ",
    "dislike ",
    "except ",
    "without ",
    "instead of ",
    "other than ",
    "apart from ",
    "besides ",
    "already seen ",
    "already watched ",
    "seen ",
)
_WORD = re.compile(r"[a-z0-9]+")
_RAW_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """Lower-case words joined by single spaces (punctuation and accents' marks dropped)."""
    return " ".join(_WORD.findall(text.lower().replace("&", " and ")))


def title_year(title: str) -> int | None:
    m = _YEAR_IN_TITLE.search(title or "")
    return int(m.group(1)) if m else None


def _bare_title(title: str) -> str:
    """Title without its trailing "(1999)"; "Prestige, The" -> "The Prestige"."""
    bare = _YEAR_IN_TITLE.sub("", title or "").strip()
    m = re.match(r"^(.*), (The|A|An)$", bare)
    return f"{m.group(2)} {m.group(1)}" if m else bare


@dataclass
class Mention:
    """A catalog item named in a message."""

    row: int
    start: int  # character offsets in the normalized message
    end: int
    negated: bool


class _WordAutomaton:
    """Aho-Corasick over words: all occurrences of many word sequences in one pass.

    A request's text is attacker-sized, so matching must cost time linear in its words (plus
    the matches found), whatever the catalog holds; trying every title at every position, as
    a loop over titles does, is quadratic and froze the server on a 200 KB message.
    Edges live in one dict keyed by (node, word): far less memory than a dict per node.
    """

    def __init__(self, keys: Sequence[Sequence[str]]):
        self._goto: dict[tuple[int, str], int] = {}
        self._key = [-1]  # the key ending exactly at a node, or -1
        self._fail = [0]  # the node of the longest proper suffix that is also a prefix
        self._out = [-1]  # the nearest node down the fail chain that ends a key, or -1
        children: list[list[int]] = [[]]
        for key_id, words in enumerate(keys):
            node = 0
            for word in words:
                nxt = self._goto.get((node, word))
                if nxt is None:
                    nxt = len(self._key)
                    self._goto[node, word] = nxt
                    self._key.append(-1), self._fail.append(0), self._out.append(-1), children.append([])
                    children[node].append(nxt)
                node = nxt
            self._key[node] = key_id
        self._link(children)

    def _link(self, children: list[list[int]]) -> None:
        # breadth first, so every shorter suffix is linked before it is needed
        words = {child: word for (_, word), child in self._goto.items()}
        queue = deque(children[0])
        while queue:
            node = queue.popleft()
            for child in children[node]:
                word, f = words[child], self._fail[node]
                while f and (f, word) not in self._goto:
                    f = self._fail[f]
                fc = self._fail[child] = self._goto.get((f, word), 0)
                self._out[child] = fc if self._key[fc] >= 0 else self._out[fc]
                queue.append(child)

    def matches(self, words: Sequence[str]) -> Iterator[tuple[int, int]]:
        """(index after the last word, key id) of every occurrence, by end position."""
        node, goto, fail = 0, self._goto, self._fail
        for i, word in enumerate(words):
            while node and (node, word) not in goto:
                node = fail[node]
            node = goto.get((node, word), 0)
            hit = node if self._key[node] >= 0 else self._out[node]
            while hit > 0:
                yield i + 1, self._key[hit]
                hit = self._out[hit]


class TitleIndex:
    """Finds catalog titles inside free text, in time linear in the text.

    Matching is on normalized words with word boundaries, longest title first, without
    overlaps. Titles that are a single short word ("Up", "Her") match only when written
    with a capital letter in the message, to keep ordinary words from becoming items.
    When several items share a title (remakes), a year written next to it picks one;
    otherwise the first catalog row wins.
    """

    def __init__(self, catalog: Catalog, min_chars: int = 3):
        self.catalog = catalog
        self.by_key: dict[str, list[int]] = {}
        for row, title in enumerate(catalog.titles):
            key = normalize(_bare_title(title))
            if len(key) >= min_chars:
                self.by_key.setdefault(key, []).append(row)
        # longest first, so "The Dark Knight Rises" wins over "The Dark Knight"
        self.keys = sorted(self.by_key, key=len, reverse=True)
        self._automaton = _WordAutomaton([k.split(" ") for k in self.keys])
        self._key_words = [k.count(" ") + 1 for k in self.keys]
        self.years = [title_year(t) for t in catalog.titles]

    def _short(self, key: str) -> bool:
        return " " not in key and len(key) < 5

    def _candidates(self, words: list[str], text: str) -> list[tuple[int, int, int, int]]:
        """(-length, key id, first word, end word) of every acceptable occurrence, best first."""
        written: set[str] | None = None  # the message's words as written, for short titles
        found = []
        for end, key_id in self._automaton.matches(words):
            key = self.keys[key_id]
            if self._short(key):
                written = set(_RAW_WORD.findall(text)) if written is None else written
                if key.capitalize() not in written:
                    continue
            found.append((-len(key), key_id, end - self._key_words[key_id], end))
        return sorted(found)

    def find(self, text: str) -> list[Mention]:
        """Items mentioned in ``text``, in the order they appear."""
        words = _WORD.findall(text.lower().replace("&", " and "))
        starts, offset = [], 0
        for w in words:
            starts.append(offset)
            offset += len(w) + 1
        norm = " ".join(words)
        taken = bytearray(len(words))
        found: list[Mention] = []
        for _, key_id, first, end in self._candidates(words, text):
            if any(taken[first:end]):
                continue  # a longer title (or an earlier one as long) already covers a word
            taken[first:end] = b"\x01" * (end - first)
            s, e = starts[first], starts[end - 1] + len(words[end - 1])
            row = self._pick(self.keys[key_id], norm[e : e + 11])
            found.append(Mention(row, s, e, self._negated(words, first)))
        return sorted(found, key=lambda m: m.start)

    def _pick(self, key: str, after: str) -> int:
        rows = self.by_key[key]
        year = re.match(r"\s*(\d{4})", after)
        if year and len(rows) > 1:
            for row in rows:
                if self.years[row] == int(year.group(1)):
                    return row
        return rows[0]

    @staticmethod
    def _negated(words: list[str], first: int) -> bool:
        # the clause before the title: from the last "and"/"but"/"or" boundary, at most 5 words
        # (only those words are joined: slicing the whole text per mention was quadratic)
        clause = " ".join(words[max(0, first - 5) : first] + [""]) + " "
        for sep in (" but ", " and ", " or ", " loved ", " liked ", " enjoyed "):
            if sep in " " + clause:
                clause = (" " + clause).rsplit(sep, 1)[1]
        return any(neg in " " + clause for neg in (" " + n for n in NEGATIONS))


@dataclass
class YearRange:
    """Inclusive year bounds; None is open."""

    low: int | None = None
    high: int | None = None

    def __bool__(self) -> bool:
        return self.low is not None or self.high is not None

    def allows(self, year: int | None) -> bool:
        if year is None:
            return False
        return (self.low is None or year >= self.low) and (self.high is None or year <= self.high)


def parse_years(text: str, reference_years: Sequence[int]) -> YearRange:
    """Year wishes in a message; "older"/"newer" are relative to ``reference_years``."""
    t = text.lower()
    # `\s*(?:-\s*)?`, not `\s*-?\s*`: the latter splits a run of spaces every possible way
    m = re.search(r"\b(?:before|pre|earlier than|older than|until)\s*(?:-\s*)?(\d{4})\b", t)
    if m:
        return YearRange(high=int(m.group(1)) - 1)
    m = re.search(r"\b(?:after|since|post|newer than|later than|from)\s*(?:-\s*)?(\d{4})\b(?!s)", t)
    if m:
        return YearRange(low=int(m.group(1)) + (0 if "since" in m.group(0) or "from" in m.group(0) else 1))
    m = re.search(r"\b(?:(\d{2})(\d{2})s|the (\d{2})s)\b", t)
    if m:
        if m.group(1):
            decade = int(m.group(1) + m.group(2))
        else:
            two = int(m.group(3))
            decade = (1900 if two >= 30 else 2000) + two
        return YearRange(decade, decade + 9)
    ref = [y for y in reference_years if y]
    if ref:
        middle = int(statistics.median(ref))
        if re.search(r"\b(older|old|classic|classics|earlier|vintage)\b", t):
            return YearRange(high=middle - 1)
        if re.search(r"\b(newer|new|recent|more recent|modern|latest|later)\b", t):
            return YearRange(low=middle + 1)
    return YearRange()


@dataclass
class ChatRequest:
    """What a conversation asks for, ready for the recommender."""

    liked: list[int] = field(default_factory=list)  # catalog rows, in mention order
    rejected: list[int] = field(default_factory=list)
    already_recommended: list[int] = field(default_factory=list)
    years: YearRange = field(default_factory=YearRange)
    last_user_text: str = ""

    @property
    def exclude(self) -> list[int]:
        return sorted(set(self.liked) | set(self.rejected) | set(self.already_recommended))

    def allow(self, catalog_years: Sequence[int | None]) -> list[int] | None:
        if not self.years:
            return None
        return [row for row, y in enumerate(catalog_years) if self.years.allows(y)]


def message_text(content: Any) -> str:
    """The text of a chat message's ``content``: a string, or OpenAI's list of parts (their
    ``text`` joined); anything else (None, a number) carries no text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def read_conversation(messages: Sequence[dict], index: TitleIndex) -> ChatRequest:
    """Parse OpenAI-style chat messages (``role``/``content``) into a :class:`ChatRequest`."""
    catalog = index.catalog
    req = ChatRequest()
    last_recs: list[int] = []
    for msg in messages:
        role, content = msg.get("role"), message_text(msg.get("content"))
        if role == "assistant":
            last_recs = [
                r for r in (catalog.get_index(i.strip()) for i in _ANSWER_LINE.findall(content)) if r is not None
            ]
            req.already_recommended += last_recs
        elif role == "user":
            for m in index.find(content):
                (req.rejected if m.negated else req.liked).append(m.row)
            req.last_user_text = content
    rejected = set(req.rejected)
    req.liked = [r for r in dict.fromkeys(req.liked) if r not in rejected]
    if req.last_user_text:
        reference = [index.years[r] for r in (last_recs or req.liked)]
        req.years = parse_years(req.last_user_text, [y for y in reference if y])
    return req


def render_answer(catalog: Catalog, rows: Sequence[int], liked: Sequence[int], years: YearRange) -> str:
    """The assistant's message: plain language, one numbered line per item with its id.

    The ``[id: ...]`` tags are how later turns know what was already recommended: clients
    send the assistant's text back, not our structured fields.
    """
    if not rows:
        return "I could not find an item that fits all of that. Try fewer constraints."
    if liked:
        names = [catalog.titles[r] for r in liked[-3:]]
        basis = names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"
        intro = f"Since you liked {basis}, you might enjoy:"
    else:
        intro = "You might enjoy:"
    if years:
        span = (
            f"from {years.low} to {years.high}"
            if years.low and years.high
            else f"from {years.low} on"
            if years.low
            else f"up to {years.high}"
        )
        intro = intro[:-1] + f" ({span}):"
    lines = [f"{n}. {catalog.titles[r]} [id: {catalog.item_ids[r]}]" for n, r in enumerate(rows, 1)]
    return "\n".join([intro, *lines])
