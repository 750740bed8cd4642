"""A model's chat conventions, settled once, where the model enters the pipeline (download_model).

Real tokenizers disagree with their own chat templates, and each disagreement breaks a stage far from its
cause. `settle` finds them and fixes the tokenizer, config.json and generation_config.json that every later
stage and the server read, and says what it changed (the base model's metadata and its stage log keep it):

- **End of turn.** The token that closes an assistant turn is read off the template (a turn is rendered
  and the first special token after the answer is taken). When `eos_token` differs (a GGUF-loaded SmolLM2
  says `<|im_start|>`; a Gemma says `<eos>` while turns end with `<end_of_turn>`), `eos_token` becomes the
  end-of-turn token, and it joins `eos_token_id` in config.json and generation_config.json: vLLM stops at
  those, so the served model stops where training taught it to.
- **No pad token** (Llama 3, Mistral): the unknown token, a padding token the vocabulary reserves, or a
  special token the template never writes is chosen; the end-of-turn token only as a last resort (a reward
  model finds its score at the last token that is not padding).
- **A template that refuses a system turn** (Gemma's raises): the template is wrapped so that a leading
  system message is folded into the first user turn, as those model cards advise, for training, evaluation
  and the served endpoint alike.
- **BOS.** Templates that write `bos_token` themselves (Llama, Mistral, Gemma) meet tokenizers that add it
  again: rendered chat text is always tokenized without special tokens (`encode_chat`), as vLLM's chat
  endpoint and TRL do.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SENTINEL = "Zq7answerZq7"  # an answer that no template rewrites, to find what follows it
PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>", "<|reserved_special_token_0|>")
SETTLED_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model")
FOLD_SYSTEM = (
    "{%- if messages and messages[0]['role'] == 'system' and messages | length > 1 "
    "and messages[1]['role'] == 'user' and messages[0]['content'] is string "
    "and messages[1]['content'] is string -%}"
    "{%- set messages = [{'role': 'user', 'content': messages[0]['content'] + '\\n\\n' + messages[1]['content']}]"
    " + messages[2:] -%}{%- endif -%}\n")


def _render(tokenizer, messages: list[dict], template: str | None = None) -> str | None:
    """The template's text of `messages`, or None when the template refuses them."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template)
    except (TemplateError, ValueError, TypeError):
        return None


def _specials(tokenizer) -> set[str]:
    return set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}


def end_of_turn(tokenizer) -> str | None:
    """The special token the chat template writes right after an assistant's answer, or None (no template,
    or it closes turns with plain text)."""
    if not tokenizer.chat_template:
        return None
    text = _render(tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": SENTINEL}])
    if not text or SENTINEL not in text:
        return None
    tail = text[text.rindex(SENTINEL) + len(SENTINEL):]
    specials = _specials(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(tail, add_special_tokens=False)["input_ids"])
    return next((t for t in tokens if t in specials), None)


def refuses_system(tokenizer) -> bool:
    """Whether the template raises on a system turn that it renders nothing wrong about otherwise."""
    if not tokenizer.chat_template:
        return False
    user = [{"role": "user", "content": "Hi"}]
    return _render(tokenizer, user) is not None and \
        _render(tokenizer, [{"role": "system", "content": "Be brief."}] + user) is None


def pad_choice(tokenizer, eot: str | None) -> str | None:
    """A token to pad with, for a tokenizer that has none: see the module's docstring for the order."""
    vocab = tokenizer.get_vocab()
    written = {t for t in (eot, tokenizer.eos_token, tokenizer.bos_token) if t}
    if tokenizer.unk_token and tokenizer.unk_token not in written:
        return tokenizer.unk_token
    for name in PAD_NAMES:
        if name in vocab and name not in written:
            return name
    rendered = _render(tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi"}]) or ""
    unused = sorted((t for t in _specials(tokenizer) if t not in rendered and t not in written), key=vocab.get)
    return unused[0] if unused else eot or tokenizer.eos_token


def settle(tokenizer, config=None, generation_config=None) -> list[str]:
    """Fix `tokenizer` (and the model's `config` and `generation_config`, when given) in place; returns one
    line per change, naming what was wrong and what it is now. Nothing to fix: []."""
    notes = []
    eot = end_of_turn(tokenizer)
    if eot and tokenizer.eos_token != eot:
        notes.append(f"eos_token {tokenizer.eos_token!r} -> {eot!r}: the chat template ends assistant turns with "
                     f"{eot!r}, so generation must stop there")
        tokenizer.eos_token = eot
    if tokenizer.pad_token is None:
        pad = pad_choice(tokenizer, eot)
        if pad is not None:
            notes.append(f"pad_token unset -> {pad!r} (padding only: masked out of attention and loss)")
            tokenizer.pad_token = pad
    if refuses_system(tokenizer):
        notes.append("the chat template refuses a system turn: a leading system message is now folded into the "
                     "first user turn")
        tokenizer.chat_template = FOLD_SYSTEM + tokenizer.chat_template
    if getattr(tokenizer, "clean_up_tokenization_spaces", False) and _is_bpe(tokenizer):
        tokenizer.clean_up_tokenization_spaces = False  # it strips spaces before punctuation from BPE output
    for where in (c for c in (config, generation_config) if c is not None):
        notes += _stop_ids(where, tokenizer)
    return notes


def _is_bpe(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.model).__name__ == "BPE"


def _stop_ids(where, tokenizer) -> list[str]:
    """Make `where.eos_token_id` include the tokenizer's eos (the end of turn) and set a missing pad id."""
    notes, eos = [], tokenizer.eos_token_id
    ids = where.eos_token_id if isinstance(where.eos_token_id, list) else \
        [] if where.eos_token_id is None else [where.eos_token_id]
    name = "generation_config" if type(where).__name__ == "GenerationConfig" else "config"
    if eos is not None and eos not in ids:
        where.eos_token_id = ids + [eos] if ids else eos
        notes.append(f"{name}.eos_token_id {ids or None} -> {where.eos_token_id}")
    if getattr(where, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        where.pad_token_id = tokenizer.pad_token_id
    return notes


def settled_folder(folder: Path, dest: Path) -> tuple[Path, list[str]]:
    """`folder` itself when its model needs nothing settled; else `dest`: links to `folder`'s files with
    the tokenizer, config.json and generation_config.json rewritten (the source is never written).
    A folder without a tokenizer (weights only, as some stores hold them) has nothing to settle."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig


    if not any((Path(folder) / name).exists() for name in TOKENIZER_FILES):
        return Path(folder), []
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    try:
        generation = GenerationConfig.from_pretrained(folder)
    except OSError:  # no generation_config.json: one is written from the config
        generation = GenerationConfig.from_model_config(config)
    notes = settle(tokenizer, config, generation)
    if not notes:
        return Path(folder), []
    shutil.rmtree(dest, ignore_errors=True)
    _link_tree(Path(folder), dest)
    for name in SETTLED_FILES:
        (dest / name).unlink(missing_ok=True)
    config.save_pretrained(dest)
    generation.save_pretrained(dest)
    for name in TOKENIZER_FILES:
        (dest / name).unlink(missing_ok=True)
    tokenizer.save_pretrained(dest)
    return dest, notes


def _link_tree(src: Path, dest: Path) -> None:
    """`dest` mirrors `src` with a symlink per file: nothing large is copied, nothing in `src` changes."""
    for path in src.rglob("*"):
        if path.is_file():
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path.resolve())


def encode_chat(tokenizer, texts: list[str], **kwargs):
    """Rendered chat text to token ids: the template already wrote every special token (BOS included)."""
    return tokenizer(texts, add_special_tokens=False, **kwargs)
