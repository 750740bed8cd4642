"""Loss masks, token by token, for chat templates in the styles of ChatML (Qwen2.5), Llama 3 and Mistral,
none of which marks generation, plus the built-in template that does. A wrong mask is a silent quality bug."""

from __future__ import annotations

import pytest

from tasks.formats import RowError
from tasks.tokens import IGNORE, encode

CHATML = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA3 = (
    "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}")
TOOLS_CHATML = CHATML.replace(
    "message['content'] + '<|im_end|>\\n'",
    "message['content'] + (message['tool_calls'] | map(attribute='function') | map(attribute='name') | join(',') "
    "if message['tool_calls'] is defined else '') + '<|im_end|>\\n'")

TWO_TURNS = [{"role": "user", "content": "reverse: a b"}, {"role": "assistant", "content": "b a"},
             {"role": "user", "content": "reverse: c d e"}, {"role": "assistant", "content": "e d c"}]


@pytest.fixture(scope="module")
def base_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from tasks.builtin import tiny_model

    folder = tmp_path_factory.mktemp("tok")
    tiny_model.build_tokenizer(folder)
    return lambda: AutoTokenizer.from_pretrained(folder)


def styled(base_tokenizer, template: str, **specials):
    tok = base_tokenizer()
    extra = [t for t in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "[INST]", "[/INST]")
             if t in template]
    tok.add_special_tokens({"additional_special_tokens": extra, **specials})
    tok.chat_template = template
    return tok


def loss_runs(tok, ids: list[int], labels: list[int]) -> list[str]:
    """The text of each stretch of tokens that carries loss; each such token's label must be itself."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        assert label in (token, IGNORE)
        if label != IGNORE:
            current.append(token)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs + ([tok.decode(current)] if current else [])


def test_chatml_without_markers_learns_each_answer_and_its_end_token(base_tokenizer):
    tok = styled(base_tokenizer, CHATML)
    ids, labels = encode(tok, {"messages": TWO_TURNS}, "assistant")
    assert loss_runs(tok, ids, labels) == ["b a<|im_end|>", "e d c<|im_end|>"]
    assert tok.decode(ids).count("<|im_start|>assistant\n") == 2  # headers are in the input, not in the loss
    assert loss_runs(tok, *encode(tok, {"messages": TWO_TURNS}, "last_assistant")) == ["e d c<|im_end|>"]
    ids, labels = encode(tok, {"messages": TWO_TURNS}, "all")
    assert labels == ids


def test_the_markers_of_a_template_that_has_them_give_the_same_mask(base_tokenizer):
    marked = base_tokenizer()  # the built-in template wraps answers in {% generation %}
    assert "{% generation %}" in marked.chat_template
    rows = [{"messages": TWO_TURNS}, {"messages": [{"role": "system", "content": "be brief"}] + TWO_TURNS[:2]}]
    for row in rows:
        for loss_on in ("assistant", "last_assistant"):
            assert encode(marked, row, loss_on) == encode(styled(base_tokenizer, CHATML), row, loss_on)


def test_llama3_style_trims_content_and_ends_answers_with_eot(base_tokenizer):
    tok = styled(base_tokenizer, LLAMA3, bos_token="<|begin_of_text|>")
    padded = [dict(m, content=f"  {m['content']} ") for m in TWO_TURNS]  # the template trims; spans must follow
    ids, labels = encode(tok, {"messages": [{"role": "system", "content": "be brief"}] + padded}, "assistant")
    assert loss_runs(tok, ids, labels) == ["b a<|eot_id|>", "e d c<|eot_id|>"]
    text = tok.decode(ids)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system") and "be brief" not in "".join(
        loss_runs(tok, ids, labels))


def test_mistral_style_answers_follow_inst_and_end_with_eos(base_tokenizer):
    tok = styled(base_tokenizer, MISTRAL, bos_token="<s>", eos_token="</s>")
    ids, labels = encode(tok, {"messages": TWO_TURNS}, "assistant")
    assert tok.decode(ids) == "<s>[INST] reverse: a b [/INST]b a</s>[INST] reverse: c d e [/INST]e d c</s>"
    assert loss_runs(tok, ids, labels) == ["b a</s>", "e d c</s>"]
    with pytest.raises(RowError, match="roles must alternate"):  # the template's own refusal, per row
        encode(tok, {"messages": [{"role": "system", "content": "x"}] + TWO_TURNS}, "assistant")


def test_tool_calls_are_learned_where_rendered_and_refused_by_name_where_not(base_tokenizer):
    call = {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "reverse_letters", "arguments": {"s": "ab"}}}]}
    row = {"messages": [TWO_TURNS[0], call, {"role": "tool", "content": "b a"},
                        {"role": "assistant", "content": "b a"}]}
    tok = styled(base_tokenizer, TOOLS_CHATML)
    assert loss_runs(tok, *encode(tok, row, "assistant")) == ["reverse_letters<|im_end|>", "b a<|im_end|>"]
    with pytest.raises(RowError, match="'reverse_letters'"):
        encode(styled(base_tokenizer, CHATML), row, "assistant")


def test_the_tokenize_cache_key_follows_the_tokenizer_max_length_and_loss_on_only():
    from storage import ArtifactRef
    from tasks.sft import SFTStage
    from tasks.stage import canonical
    from tasks.tokens import TokenizerRef

    def key(tokenizer_digest: str, model_digest: str, **sft) -> object:
        tokenizer = TokenizerRef(ArtifactRef("p/base-model", "model", 1, model_digest), tokenizer_digest)
        return canonical({"tokenizer": tokenizer, "config": SFTStage(**sft).tokenize_config("fail")})

    same = key("sha256:t", "sha256:m1")
    assert key("sha256:t", "sha256:m2", learning_rate=1e-3, epochs=3, batch_size=4) == same  # other weights, rate
    assert key("sha256:t2", "sha256:m1") != same
    assert key("sha256:t", "sha256:m1", max_length=2048) != same
    assert key("sha256:t", "sha256:m1", loss_on="last_assistant") != same
