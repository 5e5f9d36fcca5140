"""A text checkpoint's chat template as its bundle's prompt: the text transformers' `apply_chat_template` writes
for one user message with the generation prompt, the message's place left as `{media}{prompt}`.

An instruct model answers the conversation it was tuned on; fed its bare question, SmolLM2-135M-Instruct stops at
once (its first token is `<|im_end|>`). The template is read as transformers reads it: `chat_template.jinja` beside
the tokenizer (what `save_pretrained` writes today) or the `chat_template` key of tokenizer_config.json. A default
system message the template adds for a lone user message is kept, as `apply_chat_template` keeps it. The ids are
then tokenized as transformers tokenizes a chat: without the tokenizer's own special tokens (the template spells
out the BOS where the model wants one).

A later chat turn (`Prompt.turn`) is the text the template writes after an answer up to the next answer: rendered
from a two-turn conversation, less the end-of-sequence token with which the runtime closes each answer itself.

A checkpoint without a chat template, one whose template does not render a lone user message with the message in
it verbatim, or one whose tokenizer files transformers cannot read (the runtime needs only tokenizer.json), keeps
the bare `{media}{prompt}`.

Example:
    >>> chat_prompt(Path("SmolLM2-135M-Instruct"), (2,)).template  # doctest: +SKIP
    '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n<|im_start|>user\\n{media}{prompt}<|im_end|>\\n<|im_start|>assistant\\n'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgemfm.manifest import Prompt

QUESTION, EARLIER, ANSWER = "EdgemfmQuestion7f3a", "EdgemfmEarlier7f3a", "EdgemfmAnswer7f3a"


def chat_prompt(model_dir: Path, eos_token_ids: Sequence[int]) -> Prompt | None:
    """The checkpoint's chat template as a Prompt (first turn and later turns), or None without one."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError):  # a tokenizer_config.json it cannot read (JSONDecodeError is a ValueError)
        return None  # the runtime reads tokenizer.json alone; the question goes in bare, as without a template
    if not tokenizer.chat_template:
        return None
    first = _render(tokenizer, [{"role": "user", "content": QUESTION}])
    later = _render(
        tokenizer,
        [
            {"role": "user", "content": EARLIER},
            {"role": "assistant", "content": ANSWER},
            {"role": "user", "content": QUESTION},
        ],
    )
    if first is None or first.count(QUESTION) != 1:
        return None
    turn = None
    if later is not None and later.count(ANSWER) == 1 and later.count(QUESTION) == 1:
        after = later.split(ANSWER)[1]
        ends = [t for t in tokenizer.convert_ids_to_tokens(list(eos_token_ids)) if t and after.startswith(t)]
        turn = _placed(after[len(ends[0]) :] if ends else after)
    return Prompt(template=_placed(first), add_special_tokens=False, turn=turn)


def _render(tokenizer, messages: list[dict]) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # jinja raises what the template raises: a template that refuses this conversation
        return None


def _placed(text: str) -> str:
    """`text` as a str.format template: its braces doubled, the question's place `{media}{prompt}`."""
    return text.replace("{", "{{").replace("}", "}}").replace(QUESTION, "{media}{prompt}")
