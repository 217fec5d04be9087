"""Chat items to prompt text: the tokenizer's chat template, or configured format strings.

Models without a chat template (or deployments that turn it off) use the format strings from
the settings, which the model's manifest may supply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from zarf_vllm.backend.config import ChatSettings
from zarf_vllm.backend.sampling import InvalidRequest

ROLE_NAMES = {0: "user", 1: "system", 2: "function", 3: "assistant"}


@dataclass(frozen=True)
class Message:
    role: str
    content: str


def messages_from_items(items: Sequence[Any]) -> list[Message]:
    """ChatItem protos to messages; an empty chat or an unknown role is refused."""
    if not items:
        raise InvalidRequest("chat_items", "must hold at least one message")
    messages = []
    for position, item in enumerate(items):
        role = ROLE_NAMES.get(item.role)
        if role is None:
            raise InvalidRequest("chat_items", f"item {position} has unknown role {item.role}")
        messages.append(Message(role, item.content))
    return messages


class ChatPromptBuilder:
    """Renders messages into the prompt text the model was trained on."""

    def __init__(self, tokenizer: Any, settings: ChatSettings) -> None:
        self._tokenizer = tokenizer
        self._settings = settings
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.uses_template = settings.use_tokenizer_template and has_template

    def render(self, messages: Sequence[Message]) -> str:
        if self.uses_template:
            return self._render_template(messages)
        return self._render_formats(messages)

    def _render_template(self, messages: Sequence[Message]) -> str:
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        try:
            return self._tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # the template's own refusals, e.g. roles out of order
            raise InvalidRequest(
                "chat_items", f"the model's chat template refused these messages: {exc}"
            ) from exc

    def _render_formats(self, messages: Sequence[Message]) -> str:
        formats = {
            "system": self._settings.system_format,
            "user": self._settings.user_format,
            "assistant": self._settings.assistant_format,
            "function": self._settings.user_format,
        }
        text = "".join(formats[m.role].format(content=m.content) for m in messages)
        return text + self._settings.generation_prompt
