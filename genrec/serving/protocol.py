"""The wire format of `genrec serve`: request bodies and OpenAI's error body.

Kept apart from the route logic (:mod:`genrec.serving.handlers`) and the FastAPI wiring
(:mod:`genrec.serving.app`), as vLLM's entrypoints keep ``protocol.py``, so a client or a
test can build and read requests without an engine.

Errors are answered as ``{"error": {"message", "type", "param", "code"}}``, the shape the
official ``openai`` client turns into its typed exceptions.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from genrec.decoding.conversation import message_text
from genrec.decoding.sampling import Sampling
from genrec.errors import GenrecError

#: the roles OpenAI's chat API defines; anything else is refused rather than silently dropped
ChatRole = Literal["system", "developer", "user", "assistant", "tool", "function"]

#: longest item id / text field accepted through the API
MAX_ITEM_ID_CHARS = 256
MAX_ITEM_FIELD_CHARS = 10_000

# control characters (C0, DEL, C1, line/paragraph separators): an id or a title is one line,
# and a chat answer writes it as `[id: ...]`, so brackets are refused in ids as well
_BAD_IN_ID = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\[\]]")
_BAD_IN_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# longer texts may keep tabs and line breaks
_BAD_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def error_kind(status: int) -> str:
    """OpenAI's ``type`` for an HTTP status: clients branch on it, not on the message."""
    if status == 401:
        return "authentication_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(
    message: str, status: int, param: str | None = None, code: str | None = None, kind: str | None = None
) -> dict:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": kind or error_kind(status), "param": param, "code": code}}


class ApiError(GenrecError):
    """A request the server refuses, with the HTTP status and the OpenAI fields to answer it with.

    A :class:`GenrecError` so that one exception handler answers it and every other genrec
    error alike; ``param`` names the offending field, as OpenAI's errors do.
    """

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, kind: str | None = None
    ):
        super().__init__(message)
        self.http_status = status
        self.message, self.param, self.code, self.kind = message, param, code, kind

    def body(self) -> dict:
        return error_body(self.message, self.http_status, self.param, self.code, self.kind)


# -- request bodies ---------------------------------------------------------------------------------
class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = Field(False, description="Send a last chunk with the token usage.")


class _OpenAIBody(BaseModel):
    """What OpenAI's completion and chat bodies share, as genrec honours it.

    Every parameter a client may send is either honoured or refused with a 400 that names it
    (unknown fields too): a silently ignored ``stop`` or ``logit_bias`` would give answers the
    client did not ask for. ``user`` is accepted and ignored (it only tags abuse reports).
    """

    model_config = ConfigDict(extra="forbid")
    model: str
    stream: bool = Field(False, description="Answer as server-sent events (the answer once ranked, then [DONE]).")
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(
        None, ge=0, le=2, description="Absent or 0: ranked by beam search. Above 0: items drawn on the trie."
    )
    top_p: float | None = Field(
        None, gt=0, le=1, description="Nucleus cut for drawing; below 1 without a temperature draws at 1."
    )
    seed: int | None = Field(None, description="Makes a draw reproducible (ranking is deterministic anyway).")
    max_tokens: int | None = Field(None, ge=1, description="Token budget: one item costs the ID length in tokens.")
    user: str | None = Field(None, description="Accepted and ignored.")
    # accepted only at their neutral values (see Handlers.check_openai_request)
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    @property
    def sampling(self) -> Sampling | None:
        """The draw this body asks for, or None for the ranked list."""
        t, p = self.temperature, self.top_p
        if (t is None and (p is None or p >= 1)) or t == 0:
            return None
        return Sampling(temperature=1.0 if t is None else t, top_p=1.0 if p is None else p, seed=self.seed)


class Filters(BaseModel):
    """Restrictions applied inside decoding."""

    model_config = ConfigDict(extra="forbid")
    item_ids: list[str] | None = Field(None, description="Choose only among these items.")
    exclude_item_ids: list[str] | None = Field(None, description="Never return these items.")
    year_min: int | None = Field(None, description="Only items whose title year is >= this.")
    year_max: int | None = Field(None, description="Only items whose title year is <= this.")


class CompletionBody(_OpenAIBody):
    prompt: str | list[str]
    n: int = Field(1, description="Items (choices) per prompt, best first.")
    num_beams: int | None = Field(None, description="Beam width (default: the run's, at least n).")
    exclude_seen: bool = Field(False, description="Never return items whose IDs appear in the prompt.")
    filters: Filters | None = None
    logprobs: int | None = Field(
        None, ge=0, le=20, description="Return each item's score; above 0 also the top alternative items."
    )
    # accepted only at their neutral values
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``text`` (default), or the items as a JSON object in the message content."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatMessage(BaseModel):
    """One chat message: a known role and text content (a string or OpenAI's text parts)."""

    # name, tool_calls ... are allowed and ignored: ranking reads only the text
    model_config = ConfigDict(extra="allow")
    role: ChatRole
    content: str | list[dict[str, Any]] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_content(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValueError("content must be a string or a list of content parts")
        for part in value:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("text", "refusal") or not isinstance(part.get(kind), str):
                shown = repr(kind) if isinstance(kind, str) else type(part).__name__
                raise ValueError(f'only text parts ({{"type": "text", "text": "..."}}) are supported, got {shown}')
        return [{"type": "text", "text": p[p["type"]]} for p in value]

    @property
    def text(self) -> str:
        return message_text(self.content)


class ChatBody(_OpenAIBody):
    messages: list[ChatMessage]
    n: int = Field(1, description="Must be 1; ask for more items with k.")
    k: int = Field(5, description="Items listed in the answer.")
    num_beams: int | None = None
    filters: Filters | None = None
    max_completion_tokens: int | None = Field(None, ge=1, description="As max_tokens (OpenAI's newer name).")
    logprobs: bool = Field(False, description="Return each listed item's score under choices[0].logprobs.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Alternative items per listed item.")
    response_format: ResponseFormat | None = None
    # accepted only at their neutral values
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class RecommendationBody(BaseModel):
    # genrec's own route: a misspelt field is an error rather than silently ignored
    model_config = ConfigDict(extra="forbid")
    history: list[str] = Field(default_factory=list, description="The user's item ids, oldest first.")
    text: str | None = Field(None, description="Free text: titles the user liked, wishes.")
    k: int = 10
    num_beams: int | None = None
    exclude_seen: bool = True
    filters: Filters | None = None


class NewItem(BaseModel):
    """An item to add: its id, and text in the run's text fields (title, genres, ...)."""

    model_config = ConfigDict(extra="allow")
    item_id: str = Field(..., description="A new, unique id (a string or an integer).")
    title: str | None = Field(None, description="Shown in answers; defaults to the start of the item's text.")

    @field_validator("item_id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> str:
        # bool is an int in Python; `true` as an id is a client bug, not an id
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError("item_id must be a string or an integer")
        if not value.strip() or len(value) > MAX_ITEM_ID_CHARS:
            raise ValueError(f"item_id must have 1 to {MAX_ITEM_ID_CHARS} characters")
        if _BAD_IN_ID.search(value) or value != value.strip():
            raise ValueError("item_id must not hold control characters, brackets or surrounding spaces")
        return value

    @field_validator("title")
    @classmethod
    def _title(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > MAX_ITEM_FIELD_CHARS or _BAD_IN_LINE.search(value)):
            raise ValueError(f"title must be one line of at most {MAX_ITEM_FIELD_CHARS} characters")
        return value

    @model_validator(mode="after")
    def _fields(self) -> NewItem:
        for name, value in (self.model_extra or {}).items():
            if isinstance(value, bool) or not isinstance(value, (str, int, float, type(None))):
                raise ValueError(f"field {name!r} must be a string or a number")
            if isinstance(value, str) and (len(value) > MAX_ITEM_FIELD_CHARS or _BAD_IN_TEXT.search(value)):
                raise ValueError(
                    f"field {name!r} must be at most {MAX_ITEM_FIELD_CHARS} characters, without control characters"
                )
        return self

    def row(self) -> dict[str, Any]:
        """The item as a catalog-update row: text fields as strings (null is empty)."""
        extra = {k: "" if v is None else str(v) for k, v in (self.model_extra or {}).items()}
        return {**extra, "item_id": self.item_id, "title": self.title or ""}


class NewItemsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[NewItem] = Field(..., description="Each with item_id, title and the run's text fields.")


class RemoveItemsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_ids: list[str]


# -- response bodies (documented in the OpenAPI schema; routes answer through them) ----------------
class Item(BaseModel):
    """An item in an answer: the catalog's id and title, its semantic ID, its score."""

    item_id: str
    sid: str = Field(..., description="The semantic ID, e.g. <a_12><b_7><c_201>.")
    title: str
    score: float = Field(
        ...,
        description="Ranked: the sum of the ID tokens' log-probabilities. "
        "Drawn (temperature > 0): the log-probability of the draw.",
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy completion logprobs, per item: the ID is one "token", its score the logprob."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str = Field(..., description="The item's semantic ID.")
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    items: list[Item] | list[list[Item]] = Field(
        ..., description="The items of the choices; a list per prompt when several prompts were sent."
    )


class TopLogprob(BaseModel):
    token: str = Field(..., description="An item's semantic ID.")
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = Field(None, description="One entry per listed item, in order.")
    refusal: None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class YearBounds(BaseModel):
    min: int | None
    max: int | None


class Understood(BaseModel):
    """What the server read from the conversation."""

    liked: list[str] = Field(..., description="Item ids resolved from titles the user liked.")
    rejected: list[str] = Field(..., description="Item ids the user turned down (excluded).")
    excluded: int = Field(..., description="How many items the answer was kept from.")
    years: YearBounds | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    items: list[Item]
    understood: Understood


class RecommendationsResponse(BaseModel):
    object: Literal["recommendations"]
    model: str
    catalog_version: int
    items: list[Item]
    unknown_item_ids: list[str]
    used_history: list[str]
    prompt: Literal["history", "text"]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_beams: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["starting", "ready", "dead", "stopped"]
    model: str
    catalog_version: int
    items: int
    error: str | None = None


class CatalogState(BaseModel):
    catalog_version: int = Field(..., description="The first catalog version that holds the edit.")
    items: int


class AddedItem(BaseModel):
    item_id: str
    sid: str


class ItemsAdded(CatalogState):
    added: list[AddedItem]


class ItemsRemoved(CatalogState):
    removed: list[str]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error body."""

    error: ErrorInfo
