"""A GGUF file (what Ollama, LM Studio and llama.cpp run) as a float Hugging Face model folder.

transformers reads GGUF through the `gguf` package and dequantizes every tensor to the dtype asked for, but
refuses to save a model loaded that way ("quantized with QuantizationMethod.GGUF and is not serializable").
So the weights move into a fresh model built from the same config without its `quantization_config`, and
that one is saved. Tied embeddings stay tied: the fresh model ties them from the config, and saving writes
the shared tensor once. The tokenizer comes out of the same file; tasks/chat.py then settles its special
tokens against its chat template, as for every other source.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from alignflow.errors import SourceError

DTYPES = ("float32", "bfloat16", "float16")
# what the gguf package raises on a file that is not a GGUF or is cut short (a download that stopped)
UNREADABLE = (ValueError, KeyError, OSError, IndexError, struct.error)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def to_folder(gguf: Path, dest: Path, dtype: str = "float32") -> Path:
    """Write `gguf` as a Hugging Face folder (config, safetensors, tokenizer) in `dest`; returns `dest`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise SourceError(f"model {gguf}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    folder, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
    except UNREADABLE as exc:  # not a GGUF, a truncated one, an architecture it lacks
        raise SourceError(f"model {gguf}: transformers cannot read this GGUF file ({type(exc).__name__}: {exc}; "
                          "a file cut short reads this way too). Fix: pass a whole GGUF of a "
                          "text model whose architecture transformers supports (Llama, Qwen2, Mistral, Gemma, "
                          "Phi-3, ...), or the model's Hugging Face folder") from None
    plain = _without_quantization(loaded)
    plain.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def _without_quantization(loaded):
    """The same architecture and weights in a model that does not remember it came from a GGUF."""
    import torch
    from transformers import AutoModelForCausalLM

    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    return plain
