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
class _OpenAIBody(BaseModel):
    # unknown fields are allowed: OpenAI clients send many (temperature, user, ...) that ranking ignores
    model_config = ConfigDict(extra="allow")


class Filters(BaseModel):
    """Restrictions applied inside decoding."""

    model_config = ConfigDict(extra="forbid")
    item_ids: list[str] | None = Field(None, description="Choose only among these items.")
    exclude_item_ids: list[str] | None = Field(None, description="Never return these items.")
    year_min: int | None = Field(None, description="Only items whose title year is >= this.")
    year_max: int | None = Field(None, description="Only items whose title year is <= this.")


class CompletionBody(_OpenAIBody):
    model: str
    prompt: str | list[str]
    n: int = Field(1, description="Items (choices) per prompt, best first.")
    num_beams: int | None = Field(None, description="Beam width (default: the run's, at least n).")
    exclude_seen: bool = Field(False, description="Never return items whose IDs appear in the prompt.")
    filters: Filters | None = None
    stream: bool = False


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
    model: str
    messages: list[ChatMessage]
    n: int = Field(1, description="Must be 1; ask for more items with k.")
    k: int = Field(5, description="Items listed in the answer.")
    num_beams: int | None = None
    filters: Filters | None = None
    stream: bool = False


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
