"""A prompt counted as a chat-template pipeline counts it (FLUX.2, Qwen-Image).

These pipelines wrap each prompt in a chat template before their language model reads it, and their
``max_sequence_length`` counts the template's tokens too: a prompt is cut where the template and the
limit leave it room, not at the limit. :func:`fastflux_core.text.check_cut` warns about (or refuses) a
cut prompt by asking a tokenizer; :class:`TemplatedTokens` is that tokenizer for these families, built
from the one thing each family knows — the pipeline's token ids of a prompt inside its template,
truncated as the pipeline truncates — so both count a prompt the way their pipeline feeds it.

>>> class Words:  # a tokenizer of whole words
...     def decode(self, ids, skip_special_tokens=True):
...         return " ".join(ids)
>>> def ids_of(text, max_length):  # a template "<user> … <end>", cut after max_length words
...     ids = ["<user>", *text.split(), "<end>"]
...     return ids[:max_length] if max_length else ids
>>> tok = TemplatedTokens(ids_of, Words())
>>> len(tok("draw the digit 7")["input_ids"]), tok.decode(tok("draw the digit 7", True, 3)["input_ids"])
(6, 'draw the')
"""

from __future__ import annotations

from typing import Callable

IdsOf = Callable[[str, "int | None"], list]  # (prompt, max_length or None: uncut) → the template's ids


class TemplatedTokens:
    """The tokens of a prompt inside a pipeline's chat template, as the pipeline tokenizes and cuts
    them (``ids_of``). For :func:`fastflux_core.text.check_cut`: called like a tokenizer, and ``decode``
    gives back the part of the prompt that is kept — the template before the prompt (the longest start
    that an empty prompt and a one-letter prompt share) removed, special tokens skipped."""

    def __init__(self, ids_of: IdsOf, tokenizer):
        self.ids_of = ids_of
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor holds its tokenizer
        empty, probe = ids_of("", None), ids_of("x", None)
        n = 0
        while n < min(len(empty), len(probe)) and empty[n] == probe[n]:
            n += 1
        self.prefix = empty[:n]  # the template before the prompt

    def __call__(self, text: str, truncation: bool = False, max_length: int | None = None) -> dict:
        return {"input_ids": self.ids_of(text, max_length if truncation else None)}

    def decode(self, ids: list, skip_special_tokens: bool = True) -> str:
        if ids[: len(self.prefix)] == self.prefix:
            ids = ids[len(self.prefix):]
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens).strip()
