"""Projection of Agents SDK items onto the seed's columns, and back.

Each item is stored verbatim in ``raw`` (what ``get_items`` returns) and also projected into
``role``, ``content``, ``tool_calls`` and ``tool_call_id`` so that conversations can be read
with plain SQL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidMessage, InvalidMessageType
from ..models import ROLES, Message, NewMessage

# Tool-call item types and the type of their output item (as in the SDK's own rules).
CALL_TO_OUTPUT: dict[str, str] = {
    "function_call": "function_call_output",
    "custom_tool_call": "custom_tool_call_output",
    "shell_call": "shell_call_output",
    "apply_patch_call": "apply_patch_call_output",
    "computer_call": "computer_call_output",
    "local_shell_call": "local_shell_call_output",
    "tool_search_call": "tool_search_output",
    "program": "program_output",
}
OUTPUT_TYPES = frozenset(CALL_TO_OUTPUT.values()) | {"mcp_approval_response"}


def _text_of(content: Any) -> str:
    """The readable text of a message's content: a str, or the text of its parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text") or part.get("refusal") or part.get("transcript")
                if isinstance(text, str):
                    parts.append(text)
                elif part.get("type") in ("input_image", "input_file"):
                    ref = part.get("image_url") or part.get("file_id") or part.get("file_url") or part.get("filename")
                    parts.append(f"[{part.get('type')}: {ref}]" if isinstance(ref, str) else f"[{part.get('type')}]")
        return "\n".join(parts)
    return ""


def _as_dict(item: Any, where: str) -> Mapping[str, Any]:
    if isinstance(item, Mapping):
        return item
    dump = getattr(item, "model_dump", None)  # pydantic models from the openai package
    if callable(dump):
        dumped = dump(exclude_unset=True, mode="json")
        if isinstance(dumped, Mapping):
            return dumped
    raise InvalidMessageType(f"{where} is not an input item: {type(item).__name__}")


def _id(*values: Any) -> str | None:
    for value in values:
        if isinstance(value, str) and value.strip():
            return value
    return None


def to_message(item: Any, index: int = 0) -> NewMessage:
    """Project one SDK input item into a :class:`NewMessage` keeping the item in ``raw``.

    A mapping with neither a message ``role`` nor an item ``type`` is kept as an ``item``.
    Raises :class:`InvalidMessage` for a function call without its ``call_id``, and
    :class:`InvalidMessageType` (a ``TypeError``) for what is not a mapping at all.
    """
    where = f"item {index}"
    data = _as_dict(item, where)
    kind = data.get("type")
    role = data.get("role")
    if kind in (None, "message") and isinstance(role, str) and role in ROLES:
        return NewMessage(role=role, content=_text_of(data.get("content")), raw=data)
    if not isinstance(kind, str) or not kind:
        # Neither a message nor a typed item (an EncryptedSession envelope, say): the SDK's
        # sessions store such items as given, and so does this one, as an 'item'.
        return NewMessage(role="item", content="", raw=data)
    call_id = _id(data.get("call_id"))
    if kind in OUTPUT_TYPES or kind.endswith("_output"):
        output = data.get("output")
        text = output if isinstance(output, str) else _text_of(output) or json.dumps(output, ensure_ascii=False)
        answered = _id(call_id, data.get("approval_request_id"))
        # An output that names no call is kept as the assistant's: a tool message needs one.
        return NewMessage(role="tool" if answered else "assistant", content=text, tool_call_id=answered, raw=data)
    if kind == "function_call":
        if call_id is None:
            raise InvalidMessage(f"{where}: a function_call needs its 'call_id'")
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": data.get("name"), "arguments": data.get("arguments")},
        }
        return NewMessage(role="assistant", content="", tool_calls=[call], raw=data)
    if kind == "reasoning":
        summary = data.get("summary")
        return NewMessage(role="assistant", content=_text_of(summary), raw=data)
    if kind.endswith("_call") or kind in CALL_TO_OUTPUT or kind.startswith("mcp_"):
        ref = _id(call_id, data.get("id"))
        calls = [{"id": ref, "type": kind}] if ref else None
        return NewMessage(role="assistant", content="", tool_calls=calls, raw=data)
    # compaction, item_reference and anything newer: kept verbatim, attributed to the assistant.
    return NewMessage(role="assistant", content="", raw=data)


def to_items(message: Message) -> list[dict[str, Any]]:
    """The SDK input items for a stored message: its ``raw`` item, or for a message written
    through the store API, items rebuilt from its columns."""
    if message.raw is not None:
        return [message.raw]
    if message.role == "tool":
        return [{"type": "function_call_output", "call_id": message.tool_call_id or "", "output": message.content}]
    items: list[dict[str, Any]] = []
    if message.content or not message.tool_calls:
        items.append({"role": message.role, "content": message.content})
    for call in message.tool_calls or []:
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            items.append(
                {
                    "type": "function_call",
                    "call_id": call.get("id"),
                    "name": function.get("name"),
                    "arguments": function.get("arguments") or "{}",
                }
            )
    return items
