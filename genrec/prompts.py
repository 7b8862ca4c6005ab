"""The prompt format: the one module that decides what the model reads and writes.

Every task is a chat exchange rendered with the base model's chat template; the
answer is the assistant turn. For ID answers the assistant turn is exactly the
semantic-ID tokens followed by the end-of-turn token, so the constrained decoder
can start generating right after ``add_generation_prompt=True`` (no stray space
token sits between prompt and answer).

Tasks:

* ``next_item``: the user's history as semantic IDs (optionally with titles) ->
  the next item's ID.
* ``text_to_id``: an item's text -> its ID; ``id_to_text``: an ID -> its title.
  These tie the new code tokens to language.
* ``conversational``: a natural-language request built from the user's history
  titles and, when known, the target's category -> the target's ID.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

from genrec.tokenization.catalog import Catalog

# short on purpose: every prompt token is paid for in every training step and every beam
SYSTEM_PROMPT = "You recommend items by their IDs."
TASKS = ("next_item", "text_to_id", "id_to_text", "conversational")
IGNORE_INDEX = -100

#: A conversational request names at most this many liked titles (training and evaluation).
CONVERSATION_ITEMS = 5


@dataclass
class Example:
    """One tokenized training/evaluation example.

    Attributes:
        input_ids: prompt + answer token ids.
        labels: IGNORE_INDEX on the prompt, the answer ids on the answer.
        task: which task made it.
        target: the target item index for ID answers (else -1).
        history_labels: for ``next_item`` examples made with history labels: the ID
            tokens of every history item after the first shown one, IGNORE_INDEX
            elsewhere (same length as ``input_ids``); the trainer's auxiliary loss
            predicts each of them from the tokens before it. None otherwise.
        items: for ``next_item`` examples, the catalog rows the prompt shows, oldest first,
            then the target (what a distillation teacher reads). None otherwise.
    """

    input_ids: list[int]
    labels: list[int]
    task: str
    target: int = -1
    history_labels: list[int] | None = None
    items: list[int] | None = None


@dataclass
class PromptFormatter:
    """Renders tasks into token ids with the tokenizer's chat template.

    Args:
        tokenizer: an HF tokenizer that already holds the catalog's code tokens.
        catalog: the catalog (IDs, titles, text).
        max_history: most recent history items shown.
        with_titles: show each history item's title after its ID.
        max_text_chars: item text is cut to this many characters in text tasks.
        categories: optional category/genre string per catalog row, used by the
            conversational task to state a wish ("something in Comedy").
        item_tokens: show each history item's own input token (``<item_ID>``) right
            after its ID, so the model reads one learned row per item besides the
            shared code rows (as SASRec's item embedding). Items the tokenizer has no
            token for (added to the catalog after training) are shown by ID alone.
            Answers are always IDs only.
        reads_requests: the model was trained with the ``conversational`` task, so a chat
            request is given to it as its own text (:meth:`chat_prompt`). Measured by the
            request protocol (docs/new-items-and-requests.md): on the demo set such a model
            finds the target for a "liked titles + wish" request 0.191 of the time from the
            text, 0.120 from the liked titles resolved to IDs, which drop the wish.
    """

    tokenizer: object
    catalog: Catalog
    max_history: int = 20
    with_titles: bool = False
    max_text_chars: int = 200
    categories: Sequence[str] | None = None
    item_tokens: bool = False
    reads_requests: bool = False
    _eot: list[int] = field(default_factory=list, repr=False)
    _codes: frozenset[int] | None = field(default=None, repr=False)
    _item_suffix: list[str] = field(default_factory=list, repr=False)
    _template: tuple[list[int], list[int]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # the end-of-turn token the template closes an assistant message with
        eos = self.tokenizer.eos_token_id
        self._eot = [eos] if eos is not None else []
        if self.item_tokens:
            vocab = self.tokenizer.get_vocab()
            self._item_suffix = [t if t in vocab else "" for t in self.catalog.item_tokens()]

    #: the keys of ``settings()``, which an exported model folder stores and serving reads back
    SETTINGS = ("max_history", "with_titles", "item_tokens", "reads_requests")

    def settings(self) -> dict:
        """What serving needs to render prompts exactly as training did."""
        return {k: getattr(self, k) for k in self.SETTINGS}

    @classmethod
    def from_settings(cls, tokenizer, catalog: Catalog, settings: dict) -> "PromptFormatter":
        """The formatter a model was trained with, from its saved ``settings()`` (older folders
        lack the later keys: the field defaults, all off, apply)."""
        return cls(tokenizer, catalog, **{k: settings[k] for k in cls.SETTINGS if k in settings})

    # -- rendering ---------------------------------------------------------------------
    def _messages(self, user_text: str) -> list[dict]:
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user_text}]

    def prompt_ids(self, user_text: str) -> list[int]:
        """Token ids of a prompt that ends where the assistant's answer starts."""
        template = self._template_ids()
        if template:
            before, after = template
            return before + self._encode(user_text) + after
        return self._render(user_text)

    def chat_prompt(self, liked: Sequence[int], text: str) -> list[int]:
        """The prompt of a chat request: its text for a model that reads requests, else the liked
        items (titles found in the text) as an ID history, else the text."""
        if liked and not (self.reads_requests and text.strip()):
            return self.next_item_prompt(liked)
        return self.prompt_ids(text)

    def _render(self, user_text: str) -> list[int]:
        """The prompt through the chat template itself (the definition :meth:`prompt_ids` follows)."""
        if getattr(self.tokenizer, "chat_template", None):
            out = self.tokenizer.apply_chat_template(
                self._messages(user_text), tokenize=True, add_generation_prompt=True
            )
            if isinstance(out, dict) or hasattr(out, "keys"):
                out = out["input_ids"]
            return list(out)
        return self._encode(f"{SYSTEM_PROMPT}\n{user_text}\nAnswer:")

    def _encode(self, text: str) -> list[int]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            # the Rust tokenizer itself: the same ids as tokenizer(text) without its per-call overhead
            return backend.encode(text, add_special_tokens=False).ids
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    #: user texts whose rendering must equal the chat template's before the split template is used
    _PROBES = (
        "History: <a_1><b_2><c_3><d_0>, <a_4><b_5><c_6><d_1>. Next item?",
        "I liked A and B. Any idea?",
        "Which item is this: x",
        " leading space",
        "",
    )

    def _template_ids(self) -> tuple[list[int], list[int]] | None:
        """The chat template's token ids before and after the user text, when splitting there is exact.

        Rendering the Jinja template costs more than tokenizing the text, and every training
        example and request renders one prompt; with the template tokenized once, only the user
        text is. The split is used only if it gives the template's own ids for the probes (it
        does when the template puts special tokens or a newline around the user text).
        """
        if self._template is None:
            self._template = ([], [])
            if getattr(self.tokenizer, "chat_template", None):
                sentinel = "\u2063genrec\u2063"
                text = self.tokenizer.apply_chat_template(
                    self._messages(sentinel), tokenize=False, add_generation_prompt=True
                )
                if text.count(sentinel) == 1:
                    before, after = text.split(sentinel)
                    parts = (self._encode(before), self._encode(after))
                    if all(parts[0] + self._encode(p) + parts[1] == self._render(p) for p in self._PROBES):
                        self._template = parts
        return self._template if self._template[0] else None

    def _answer_ids(self, text: str) -> list[int]:
        return self._encode(text) + self._eot

    def _example(self, user_text: str, answer: str, task: str, target: int = -1) -> Example:
        prompt = self.prompt_ids(user_text)
        answer_ids = self._answer_ids(answer)
        return Example(prompt + answer_ids, [IGNORE_INDEX] * len(prompt) + answer_ids, task, target)

    def history_text(self, history: Sequence[int]) -> str:
        recent = list(history)[-self.max_history :]
        if self.item_tokens:
            shown = [self.catalog.sid(i) + self._item_suffix[i] for i in recent]
        else:
            shown = [self.catalog.sid(i) for i in recent]
        if self.with_titles:
            return "; ".join(f"{s} {self.catalog.titles[i]}" for s, i in zip(shown, recent))
        return ", ".join(shown)

    # -- tasks ---------------------------------------------------------------------------
    def next_item_text(self, history: Sequence[int]) -> str:
        return f"History: {self.history_text(history)}. Next item?"

    def next_item_prompt(self, history: Sequence[int]) -> list[int]:
        """Prompt ids for recommending after ``history`` (catalog rows)."""
        return self.prompt_ids(self.next_item_text(history))

    def next_item(self, history: Sequence[int], target: int, history_labels: bool = False) -> Example:
        """History -> the target's ID; ``history_labels`` also labels the history's own IDs."""
        ex = self._example(self.next_item_text(history), self.catalog.sid(target), "next_item", target)
        ex.items = list(history)[-self.max_history :] + [target]
        if history_labels:
            prompt_len = next(i for i, t in enumerate(ex.labels) if t != IGNORE_INDEX)
            ex.history_labels = self._history_id_labels(ex.input_ids, prompt_len)
        return ex

    def _history_id_labels(self, input_ids: list[int], prompt_len: int) -> list[int]:
        """Labels for the ID tokens inside the prompt, except the first shown item's.

        A history item is a run of consecutive code tokens (IDs are separated by
        ", " or by titles); the first run has no earlier item to be predicted from.
        """
        codes = self.code_token_ids
        out = [IGNORE_INDEX] * len(input_ids)
        runs, prev_code = 0, False
        for pos in range(prompt_len):
            is_code = input_ids[pos] in codes
            if is_code and not prev_code:
                runs += 1
            if is_code and runs > 1:
                out[pos] = input_ids[pos]
            prev_code = is_code
        return out

    @property
    def code_token_ids(self) -> frozenset[int]:
        """Token ids of every code token of the catalog."""
        if self._codes is None:
            self._codes = frozenset(self.tokenizer.convert_tokens_to_ids(self.catalog.code_tokens()))
        return self._codes

    def text_to_id(self, item: int) -> Example:
        text = (self.catalog.texts[item] or self.catalog.titles[item])[: self.max_text_chars]
        return self._example(f"Which item is this: {text}", self.catalog.sid(item), "text_to_id", item)

    def id_to_text(self, item: int) -> Example:
        return self._example(f"What is item {self.catalog.sid(item)}?", self.catalog.titles[item], "id_to_text")

    def conversation_text(
        self, liked_titles: Sequence[str], wish: str | None = None, rng: random.Random | None = None
    ) -> str:
        """A natural-language request from liked titles and an optional wish."""
        rng = rng or random.Random(0)
        titles = [t for t in liked_titles if t]
        if not titles:
            liked = ""
        elif len(titles) == 1:
            liked = f"I liked {titles[0]}."
        else:
            liked = f"I liked {', '.join(titles[:-1])} and {titles[-1]}."
        asks = ["What should I try next?", "Any recommendation?", "What would you suggest next?"]
        ask = f"Something in {wish}?" if wish else rng.choice(asks)
        return f"{liked} {ask}".strip()

    def conversational(self, history: Sequence[int], target: int, rng: random.Random) -> Example:
        """A request built from 1-5 recent history titles (and the target's category, at times)."""
        recent = list(history)[-self.max_history :]
        n = min(len(recent), rng.randint(1, CONVERSATION_ITEMS))
        liked = [self.catalog.titles[i] for i in recent[-n:]]
        wish = None
        if self.categories is not None and rng.random() < 0.5 and self.categories[target]:
            wish = self.categories[target]
        return self._example(
            self.conversation_text(liked, wish, rng), self.catalog.sid(target), "conversational", target
        )
