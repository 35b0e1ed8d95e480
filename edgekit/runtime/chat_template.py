"""Chat templates from a model's own metadata, rendered with jinja2 as transformers renders them.

The environment matches transformers' `apply_chat_template`: a sandbox (templates come with downloaded
models and are untrusted code), trim_blocks/lstrip_blocks, loop controls, `raise_exception`, a `tojson`
that does not HTML-escape, `strftime_now`, and the tokenizer's special tokens as variables.
A base model without a template gets a plain "User: / Assistant:" transcript.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from edgekit.errors import EdgekitError

Message = dict[str, Any]

# For base models: a transcript the model can continue; a new "User:" line ends the answer.
PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% else %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise EdgekitError(f"the model's chat template does not parse: {e}") from None


class ChatTemplate:
    """A model's chat template with its special tokens; `render` turns messages into prompt text."""

    def __init__(self, template: str | None, *, bos_token: str | None = None, eos_token: str | None = None,
                 extra_tokens: dict[str, str | None] | None = None) -> None:
        self.is_plain = not template
        self.source = template or PLAIN_TEMPLATE
        # transformers passes the tokenizer's special tokens as template variables; so do we (None for unknown)
        self.tokens = {"bos_token": bos_token or "", "eos_token": eos_token or "", **(extra_tokens or {})}
        self._template = _compile(self.source)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        import jinja2

        for m in messages:
            if not isinstance(m, dict) or "role" not in m:
                raise EdgekitError(f"a chat message must be a dict with 'role' and 'content', got {m!r}")
        try:
            return self._template.render(messages=[dict(m) for m in messages],
                                         add_generation_prompt=add_generation_prompt, **{**self.tokens, **kwargs})
        except jinja2.exceptions.TemplateError as e:
            raise EdgekitError(f"the chat template refused the conversation: {e}") from None

    def stop_strings(self) -> list[str]:
        """Text that ends an assistant turn, found by rendering probe conversations: the marker a template puts
        right after an answer ("<|im_end|>", "</s>"), else the next speaker's line of a transcript ("\\nUser:")."""
        a, u = "ASSISTANT-TEXT-7f3a", "USER-TEXT-7f3a"
        turn = [{"role": "user", "content": "USER-TEXT-0"}, {"role": "assistant", "content": a}]
        try:
            ended = self.render(turn, add_generation_prompt=False)
            text = self.render([*turn, {"role": "user", "content": u}], add_generation_prompt=False)
        except EdgekitError:
            return []
        if a not in ended or a not in text or u not in text:
            return []
        marker = ended[ended.index(a) + len(a):].strip()
        if marker:
            return [marker]
        sep = text[text.index(a) + len(a):text.index(u)].strip()
        return ["\n" + sep] if sep else []
