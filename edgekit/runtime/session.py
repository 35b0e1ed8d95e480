"""A multi-turn chat with one model: the history, trimmed to the context window, and one random stream.

The whole conversation is re-rendered by the chat template every turn (templates may depend on the full
history), and the model's prefix reuse means only the new turn is actually computed. When the rendered
conversation would leave too little room for an answer, the oldest turns are dropped; the system prompt
always stays.
"""

from __future__ import annotations

from collections.abc import Iterator

from edgekit.errors import EdgekitError
from edgekit.runtime.base import Model, StopCheck
from edgekit.runtime.chat_template import Message
from edgekit.runtime.sampling import Sampler, SamplingParams


class ChatSession:
    def __init__(self, model: Model, *, system: str | None = None, params: SamplingParams | None = None) -> None:
        self.model = model
        self.system = system
        self.params = params or SamplingParams()
        self.history: list[Message] = []   # user/assistant messages, oldest first
        self.dropped_turns = 0             # turns dropped so far to fit the context
        self.sampler = Sampler(self.params)

    def reset(self) -> None:
        """Forget the conversation; the random stream starts again from the seed."""
        self.history.clear()
        self.dropped_turns = 0
        self.sampler = Sampler(self.params)

    def messages(self, user: str | None = None, history: list[Message] | None = None) -> list[Message]:
        """The conversation as the template sees it: system prompt, history, then `user` if given."""
        sys_msg = [{"role": "system", "content": self.system}] if self.system else []
        turns = self.history if history is None else history
        return [*sys_msg, *turns, *([{"role": "user", "content": user}] if user is not None else [])]

    def _fit(self, user: str) -> list[int]:
        """Prompt tokens for the next answer, after dropping the oldest turns while they leave less than
        min(max_tokens, n_ctx / 4) positions for the answer. A message that cannot fit even alone is refused
        and the history is left as it was."""
        n_ctx = self.model.n_ctx
        reserve = max(1, min(self.params.max_tokens, n_ctx // 4))
        history, dropped = list(self.history), 0
        while True:
            ids = self.model.chat_prompt(self.messages(user, history))
            if len(ids) + reserve <= n_ctx or not history:
                break
            # one turn: the oldest user message and what followed it up to the next user message
            cut = next((i for i, m in enumerate(history) if i > 0 and m["role"] == "user"), len(history))
            del history[:cut]
            dropped += 1
        if len(ids) >= n_ctx:
            raise EdgekitError(f"the message is too long: the prompt takes {len(ids)} tokens, the context holds "
                               f"{n_ctx} (raise --ctx or shorten it)")
        self.history, self.dropped_turns = history, self.dropped_turns + dropped
        return ids

    def send(self, user: str, should_stop: StopCheck | None = None) -> Iterator[str]:
        """Stream the answer to `user`; the exchange joins the history when the answer ends (an interrupted
        answer is kept as far as it got)."""
        ids = self._fit(user)
        pieces: list[str] = []
        try:
            for piece in self.model.stream_text(ids, self.params, stop=self.model.stop_strings, sampler=self.sampler,
                                                should_stop=should_stop):
                pieces.append(piece)
                yield piece
        finally:
            self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": "".join(pieces)}]
