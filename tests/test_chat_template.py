"""A text checkpoint's chat template in its bundle (exporters/chat_template.py): the prompt's ids are what
transformers' `apply_chat_template` gives for the same conversation, first turn and later turns, with the template
saved as `save_pretrained` writes it today (chat_template.jinja) or in tokenizer_config.json as it used to."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_text import tiny_text_model

import edgemfm
from edgemfm.cli import main
from edgemfm.exporters.chat_template import chat_prompt

# a default system message (with braces, which the bundle's format template must keep as text) unless one is given
TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}{{ bos_token }}<|system|>Be brief {not verbose}.</s>{%- endif %}"
    "{%- for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>{%- endif %}"
)


def _with_template(checkpoint, in_config: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(checkpoint)
    assert (checkpoint / "chat_template.jinja").exists()  # where transformers writes it now
    if in_config:  # the older layout: the template inside tokenizer_config.json
        (checkpoint / "chat_template.jinja").unlink()
        config = json.loads((checkpoint / "tokenizer_config.json").read_text())
        (checkpoint / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    return AutoTokenizer.from_pretrained(checkpoint)


@pytest.mark.parametrize("in_config", [False, True])
def test_the_template_is_read_where_transformers_reads_it(tmp_path, in_config):
    checkpoint = tiny_text_model("LlamaForCausalLM", tmp_path / "model")
    assert chat_prompt(checkpoint, (257,)) is None  # no template: the bare question
    tokenizer = _with_template(checkpoint, in_config)
    prompt = chat_prompt(checkpoint, (tokenizer.eos_token_id,))
    assert prompt.template == "<s><|system|>Be brief {{not verbose}}.</s><|user|>{media}{prompt}</s><|assistant|>"
    assert prompt.turn == "<|user|>{media}{prompt}</s><|assistant|>"  # after the answer and its closing </s>
    assert not prompt.add_special_tokens


def test_an_instruct_bundle_prompts_and_chats_as_transformers_templates(tmp_path):
    from transformers import AutoModelForCausalLM

    checkpoint = tiny_text_model("LlamaForCausalLM", tmp_path / "model")
    tokenizer = _with_template(checkpoint)
    out = tmp_path / "bundle"
    assert main(["export", "--model", str(checkpoint), "--device", "host", "--out", str(out)]) == 0
    pipe = edgemfm.load(out)
    first, later = "Name a {colour}.", "And another?"

    def templated(*messages: str):
        roles = ["user", "assistant"] * len(messages)
        conversation = [{"role": r, "content": m} for r, m in zip(roles, messages)]
        return tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=False)

    ids = pipe.prompt_ids(first)
    assert ids == templated(first)  # one BOS, from the template: none added by the tokenizer
    answer = tokenizer.encode("Red.", add_special_tokens=False)
    conversation = ids + answer + [tokenizer.eos_token_id] + pipe.prompt_ids(later, first_turn=False)
    assert conversation == templated(first, "Red.", later)
    # the bundle's greedy answer is transformers' on the templated ids
    ours = list(pipe.generate_tokens(first, max_new_tokens=12))
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        generated = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    theirs = [t for t in generated[0, len(ids) :].tolist() if t not in pipe.manifest.tokenizer.eos_token_ids]
    assert len(ours) >= 6 and ours == theirs[: len(ours)]


# The shapes of real checkpoints' templates: a default system message (Qwen2), no system role and a renamed
# assistant (Gemma), the BOS in the first message only (Llama 3), a generation prompt that differs from the
# closing (Phi-3). Each closes an answer with the token its generation_config lists as an end of sequence.
STYLES = {
    "qwen2": (
        "<|im_end|>",
        "{%- for message in messages %}{%- if loop.first and messages[0]['role'] != 'system' %}"
        "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
    ),
    "gemma": (
        "<end_of_turn>",
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
        "{% else %}{% set role = message['role'] %}{% endif %}"
        "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}",
    ),
    "llama3": (
        "<|eot_id|>",
        "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
        "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
        "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    ),
    "phi3": (
        "<|end|>",
        "{% for message in messages %}{% if message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + "
        "'<|end|>\\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + "
        "'<|end|>\\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}"
        "{{ eos_token }}{% endif %}",
    ),
}


@pytest.mark.parametrize("style", list(STYLES))
def test_real_template_shapes_give_transformers_text_first_turn_and_later(tmp_path, style):
    from transformers import AutoTokenizer

    end, template = STYLES[style]
    checkpoint = tiny_text_model("LlamaForCausalLM", tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.add_special_tokens({"additional_special_tokens": [end]})
    tokenizer.chat_template = template
    tokenizer.save_pretrained(checkpoint)
    prompt = chat_prompt(checkpoint, (tokenizer.convert_tokens_to_ids(end),))

    def rendered(*messages: str) -> str:
        roles = ["user", "assistant"] * len(messages)
        conversation = [{"role": r, "content": m} for r, m in zip(roles, messages)]
        return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)

    first = prompt.template.format(media="", prompt="Name a colour.")
    assert first == rendered("Name a colour.")
    later = prompt.turn.format(media="", prompt="Another?")
    assert first + "Red." + end + later == rendered(
        "Name a colour.", "Red.", "Another?"
    )  # the runtime closes with `end`


def test_a_tokenizer_transformers_cannot_build_keeps_the_bare_question(tmp_path):
    """The runtime reads tokenizer.json alone: a tokenizer_config.json transformers cannot read fails no export."""
    checkpoint = tiny_text_model("LlamaForCausalLM", tmp_path / "model")
    _with_template(checkpoint)
    (checkpoint / "tokenizer_config.json").write_text('{"chat_template": ')  # cut short
    assert chat_prompt(checkpoint, (257,)) is None
