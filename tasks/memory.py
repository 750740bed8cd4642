"""How much memory each stage that loads a model needs at its peak, known before any weights are read.

The model's shapes come from its config.json (a local folder, a hub cache snapshot, the built-in tiny
model) or a GGUF file's header (metadata and tensor table only; no tensor is read or dequantized); the
parameter count from the safetensors headers or the GGUF tensor table when there are weights to read, else
from the shapes. A hub model not in the cache, or an s3:// GGUF, is "unknown until download".

Symbols: P parameters, T trainable parameters, w bytes per weight (4 float32, 2 bfloat16/float16), t bytes
per trainable parameter (4 for LoRA adapters, which PEFT keeps in float32; w for full fine-tuning),
f bytes per activation (2 under bf16 autocast on a GPU; 4 with a QLoRA float32 compute type; else w),
b rows per device, s tokens per row (max_length), n = b*s tokens per forward (preference trainers and the
reward model run chosen and rejected rows together: n = 2*b*s), L layers, h hidden size, i intermediate
size, a attention heads, kv key/value width (kv heads x head dim), V vocabulary, N = processes x machines.

    parameters   P = V*h [+ V*h untied lm_head] + L*(2*h*(h + kv) + 3*h*i + 2*h) + h   (Llama-style decoder;
                 exact counts from the weights' headers win)
    LoRA         T = sum over adapted Linear layers of r*(in + out)  (+ out with DoRA's magnitudes);
                 all-linear adapts q, k, v, o, gate, up, down in each of the L layers
    weights      P*w; QLoRA: the layers' Linear weights in NF4 at 0.5625 bytes (4 bits + a float32 absmax per
                 64), the rest (embeddings, norms) at w
    gradients    T*t; ZeRO-2 and ZeRO-3 divide them by N
    optimizer    AdamW: 2 states per trainable parameter, 2*T*t (torch keeps them in the parameter's dtype);
                 under DeepSpeed ZeRO: 8*T float32 states (+ a 4*T float32 master copy of 16-bit weights),
                 divided by N
    activations  Korthikanti et al. (2022), "Reducing Activation Recomputation in Large Transformer Models",
                 per layer and token, generalised to grouped KV heads and gated (SwiGLU) MLPs without dropout:
                 e = 8*h + 2*kv + 4*i elements (+ a*s for eager attention's scores; SDPA keeps none);
                 LoRA with dropout adds each adapted layer's input again, plus a 1-byte mask (SFT and GRPO:
                 TRL's other trainers turn dropout off). Saved without gradient checkpointing: n*L*e*f; with
                 it: n*(L*h + e)*f (each layer's input, and one layer recomputed at a time). That is what a GPU
                 holds; on CPU the process holds 1.75x (LoRA) or 1.2x (full) the saved tensors, and 0.35 of
                 that with checkpointing (CPU_RESIDENT, measured: glibc's malloc keeps freed temporaries)
    logits       TRL 1.16's SFT, DPO, KTO and GRPO trainers use a fused LM head that never holds the n x V
                 logits: k tiles of min(n, 4096) x min(V, 32768) x f (k = 8 on CPU, measured; 2 on a GPU);
                 on a CPU in float32, tasks.lm_head's: the log-probabilities kept for the backward,
                 4*min(n*V, 2^28), and 3 chunks of 4*min(n*V, 2^25) logits,
                 the float32 gradient of the last hidden states (4*n*h) and, when the head trains, of the
                 head (4*V*h). ORPO and CPO hold the full logits: 3 copies of n*V*4 (logits, log-softmax,
                 gradient). The reward model's head has one output: nothing to count
    reference    DPO and KTO with full fine-tuning load a second copy of the weights (P*w); with LoRA the
                 adapter-disabled model is the reference (TRL 1.16 DPOTrainer: `ref_model = None` for a PEFT
                 model), so nothing; ORPO and CPO have none; GRPO loads one only with beta > 0 and full
    KV cache     vLLM on CPU takes VLLM_CPU_KVCACHE_SPACE GiB (1 unless set: serving/vllm.py); on a GPU it
                 claims gpu_memory_utilization (0.9) of the whole device; transformers' generate holds
                 2*L*kv*f per token of each sequence
    vLLM weights 2 bytes a weight (dtype auto serves float32 checkpoints in bfloat16); quantized Linears 1 byte
                 (int8, fp8) or 0.5 (int4)
    merge        two copies (base+adapter, merged) and the logits of 8 probe prompts four times (both
                 models', their difference, its absolute value)
    quantize     the model, 2 more bytes a weight (GPTQ's quantized copy, the compressed state dict written
                 on save), the calibration samples' layer inputs and outputs (2*samples*max_length*h*w),
                 one layer's GPTQ Hessians (4*in*in per Linear)
    overhead     the process itself, measured here (OVERHEAD; benchmarks/memory.py): Python with its
                 libraries imported, a tokenizer and a dataset open

Later stages see texts as long as the last trainer's max_length (at most 512): an upper bound.

What runs where: trainers in a child process (`accelerate launch`, which is a process of its own);
merge, quantize, sample (transformers), judge and score in the flow's own process; vLLM in its server
processes; EvalScope in a child. On a GPU host trainers and vLLM use the GPU; the rest use CPU RAM.
The check (flows/preflight.py) compares what each stage needs with what its device has free now, and names
the setting that would make it fit. It cannot know which stages the cache will skip, so it judges them all.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

GIB, MIB = 2**30, 2**20
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float64": 8}
NF4_BYTES = 0.5625  # 4 bits per weight + one float32 absmax per block of 64
TOKEN_TILE, VOCAB_TILE = 4096, 32768  # trl/kernels/chunked_logprob.py: TOKEN_CHUNK_SIZE, _CHUNKED_LOGPROB_CHUNK_SIZE
# logits tiles alive at once in the fused LM head's backward: on CPU its torch fallback holds the tile, its
# scaled copy, log-probabilities, probabilities, the gradient and temporaries (measured: 8); Triton works in place
FUSED_TILES = {"cpu": 8, "cuda": 2}
# chunks of logits alive at once in tasks.lm_head (a CPU in float32), beside the log-probabilities it keeps:
# the logits, their log-softmax and softmax (for the entropy) in the forward; probabilities and gradient after
LEAN_CHUNKS = 3
# resident / saved activations on CPU, measured with SmolLM2-135M (benchmarks/memory.py): glibc's malloc keeps
# each layer's freed temporaries (LoRA adds three output-sized ones per adapted Linear), and with gradient
# checkpointing the resident memory is 0.35 of that, not the 1/L the saved tensors shrink by. 1 on a GPU.
CPU_RESIDENT = {"lora": 1.75, "full": 1.2, "checkpointing": 0.35}
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHECK = "ALIGNFLOW_MEMORY_CHECK"  # "off": the check before work reports but does not refuse

# Measured on this machine (benchmarks/memory.py; docs/MEMORY.md): resident memory of each
# kind of process before its model, data and activations.
OVERHEAD = {
    "trainer": int(640 * MIB),   # python -m tasks.trainer: torch, transformers, TRL, PEFT, accelerate, datasets
    "launcher": int(235 * MIB),  # python -m accelerate.commands.launch, beside every trainer
    "flow": int(560 * MIB),      # the flow's own process with Prefect and the stages' libraries imported
    "llmcompressor": int(70 * MIB),  # what llm-compressor adds to the flow's process
    "vllm": int(1600 * MIB),     # vLLM's API server, engine and worker processes (PSS), without weights and KV
    "evalscope": int(530 * MIB),  # the EvalScope child of `evaluate`
    "cuda_context": int(600 * MIB),  # what CUDA itself takes on a GPU, per process
}


# ---- shapes -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """What the formulas need to know about a (dense, decoder-only) model."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    dtype: str = "float32"
    params: int = 0  # exact, from the weights' headers; 0: use the formula
    attention_bias: bool = False
    family: str = ""
    origin: str = ""  # where the shape was read

    @property
    def kv(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def q(self) -> int:
        return self.heads * self.head_dim

    @property
    def w(self) -> int:
        return DTYPE_BYTES.get(self.dtype, 4)

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each Linear layer in one decoder layer."""
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, self.q), "k_proj": (h, self.kv), "v_proj": (h, self.kv), "o_proj": (self.q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def total_params(self) -> int:
        return self.params or formula_params(self)

    def describe(self) -> str:
        """Two lines: what it is and where that was read; its shapes."""
        tied = ", tied embeddings" if self.tied else ""
        return (f"{self.family or 'decoder'}, {count(self.total_params())} parameters, {self.dtype} (from "
                f"{self.origin})\n{self.layers} layers, hidden {self.hidden}, intermediate {self.intermediate}, "
                f"{self.heads} heads ({self.kv_heads} for keys and values), vocab {self.vocab}{tied}")


def formula_params(shape: Shape) -> int:
    """P from the shapes: embeddings (+ an untied head), each layer's Linears, biases and norms, the last norm."""
    h = shape.hidden
    layer = sum(i * o for i, o in shape.linears().values()) + 2 * h
    if shape.attention_bias:
        layer += shape.q + 2 * shape.kv
    return shape.vocab * h * (1 if shape.tied else 2) + shape.layers * layer + h


def linear_params(shape: Shape) -> int:
    """Parameters in the decoder layers' Linear weights (what QLoRA stores in 4 bits)."""
    return shape.layers * sum(i * o for i, o in shape.linears().values())


def from_config(config: dict, origin: str, params: int = 0, dtype: str | None = None) -> Shape:
    """A Shape from a transformers config.json (a multimodal config's text_config when it has one)."""
    c = config.get("text_config") or config
    heads = c["num_attention_heads"]
    hidden = c["hidden_size"]
    return Shape(layers=c["num_hidden_layers"], hidden=hidden, intermediate=c.get("intermediate_size", 4 * hidden),
                 heads=heads, kv_heads=c.get("num_key_value_heads") or heads,
                 head_dim=c.get("head_dim") or hidden // heads, vocab=c["vocab_size"],
                 tied=bool(config.get("tie_word_embeddings", c.get("tie_word_embeddings", True))),
                 dtype=dtype or str(config.get("dtype") or config.get("torch_dtype") or "float32"),
                 params=params, attention_bias=bool(c.get("attention_bias", c.get("model_type") == "qwen2")),
                 family=c.get("model_type", ""), origin=origin)


def folder_shape(folder: Path, origin: str) -> Shape:
    """config.json, and the exact parameter count from the safetensors headers (8 bytes + JSON each)."""
    config = json.loads((folder / "config.json").read_text())
    shape = from_config(config, origin)
    return replace(shape, params=safetensors_params(folder))


def safetensors_params(folder: Path) -> int:
    return sum(safetensors_elements(path) for path in sorted(folder.glob("*.safetensors")))


def safetensors_elements(path: Path) -> int:
    """Elements in a safetensors file, from its header alone: 8 bytes of header length, then JSON. A file
    that is not one (truncated, or other bytes under the name) raises ValueError naming it."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < length <= min(size - 8, 100 << 20):
            raise ValueError(f"{path} is not a safetensors file (its header length {length} does not fit "
                             f"its {size} bytes)")
        try:
            header = json.loads(f.read(length))
            return sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
        except (ValueError, AttributeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a safetensors file (its header does not read: {exc})") from exc


# the built-in tiny model (tasks/builtin/tiny_model.py): its vocabulary is what its BPE training reaches,
# known only after building it, so the shape is written here (tests/tasks/test_memory.py builds and compares)
TINY_QWEN2 = Shape(layers=2, hidden=128, intermediate=256, heads=4, kv_heads=2, head_dim=32, vocab=287, tied=True,
                   dtype="float32", params=332_800, attention_bias=True, family="qwen2",
                   origin="tasks/builtin/tiny_model.py")


def gguf_shape(path: Path, dtype: str) -> Shape:
    """A Shape from a GGUF header: `<arch>.block_count`, `.embedding_length`, ... and the tensor table (the
    parameter count, and whether an `output.weight` unties the head). `dtype`: what it is dequantized to."""
    meta, tensors = gguf_header(path)
    arch = meta["general.architecture"]
    heads = int(meta[f"{arch}.attention.head_count"])
    hidden = int(meta[f"{arch}.embedding_length"])
    head_dim = int(meta.get(f"{arch}.attention.key_length") or meta.get(f"{arch}.rope.dimension_count")
                   or hidden // heads)
    vocab = int(meta.get(f"{arch}.vocab_size") or meta.get("tokenizer.ggml.tokens") or 0)
    return Shape(layers=int(meta[f"{arch}.block_count"]), hidden=hidden,
                 intermediate=int(meta[f"{arch}.feed_forward_length"]), heads=heads,
                 kv_heads=int(meta.get(f"{arch}.attention.head_count_kv") or heads), head_dim=head_dim, vocab=vocab,
                 tied="output.weight" not in tensors, dtype=dtype, params=sum(tensors.values()),
                 attention_bias="blk.0.attn_q.bias" in tensors, family=arch, origin="the GGUF header")


def gguf_header(path: Path) -> tuple[dict, dict[str, int]]:
    """(metadata: scalars and strings; an array as its length), {tensor name: elements}) of a GGUF file.
    gguf.GGUFReader makes a numpy view of every element of every array (3.5 s for SmolLM2's 49k-token
    vocabulary); this reader steps over arrays by their lengths instead (0.1 s) and reads no tensor data."""
    import gguf
    import numpy as np

    from tasks.gguf import UNREADABLE

    arrays = gguf.GGUFValueType.ARRAY

    class Header(gguf.GGUFReader):
        def _get_field_parts(self, offset, raw_type):
            if raw_type != arrays:
                return super()._get_field_parts(offset, raw_type)
            item_type, length = self._get(offset, np.uint32), self._get(offset + 4, np.uint64)
            size = array_bytes(self.data, offset + 12, gguf.GGUFValueType(int(item_type[0])), int(length[0]))
            return 12 + size, [item_type, length], [1], [arrays]

    try:
        reader = Header(str(path))
    except UNREADABLE as exc:
        raise ValueError(f"{path} is not a whole GGUF file ({type(exc).__name__}: {exc})") from None
    meta = {name: int(f.parts[f.data[0]][0]) if f.types[0] == arrays else f.contents()
            for name, f in reader.fields.items()}
    return meta, {t.name: int(t.n_elements) for t in reader.tensors}


def array_bytes(data, offset: int, item_type, length: int) -> int:
    """Bytes of a GGUF array's items: fixed-size scalars, or strings (each a uint64 length, then the bytes)."""
    import gguf
    import numpy as np

    scalar = gguf.GGUFReader.gguf_scalar_to_np.get(item_type)
    if scalar is not None:
        return length * np.dtype(scalar).itemsize
    if item_type != gguf.GGUFValueType.STRING:
        raise ValueError(f"GGUF arrays of {item_type.name} are not read here")
    buffer, end = memoryview(data), offset
    for _ in range(length):
        end += 8 + struct.unpack_from("<Q", buffer, end)[0]
    return end - offset


def model_shape(source: str, dtype: str = "float32") -> Shape | str:
    """The base model's Shape, or why it cannot be known ("unknown until download: ..."; "unknown: ..." for
    a config these formulas do not read). `dtype`: what a GGUF source is dequantized to (spec.model_dtype);
    other sources keep their own."""
    try:
        return read_shape(source, dtype)
    except (KeyError, ValueError, TypeError, OSError) as exc:
        return f"unknown: the shapes of {source} could not be read ({type(exc).__name__}: {exc})"


def read_shape(source: str, dtype: str) -> Shape | str:
    from tasks.download import local_gguf

    if source == "builtin://tiny-qwen2":
        return TINY_QWEN2
    if source.endswith(".gguf"):
        path = local_gguf(source)
        if path is None:
            return f"unknown until download ({source} is read only when the run fetches it)"
        return gguf_shape(path, dtype)
    if "://" not in source:
        return folder_shape(Path(source), "config.json")
    return hub_shape(source)


def hub_shape(source: str) -> Shape | str:
    """The shape of a hub model that is in the hub's cache (nothing is downloaded)."""
    from tasks.hub import hub_for

    scheme, _, rest = source.partition("://")
    if scheme not in ("hf", "modelscope"):
        return f"unknown until download ({source})"
    repo, _, revision = rest.partition("@")
    hub = hub_for(scheme)
    try:
        folder = Path(hub.snapshot(repo, revision=revision or None, local_files_only=True))
    except (hub.not_cached, ValueError, OSError):
        return f"unknown until download ({source} is not in the {hub.title} cache; its config.json has the shapes)"
    if not (folder / "config.json").is_file():
        return f"unknown until download ({source}'s cached copy has no config.json)"
    return folder_shape(folder, f"config.json in the {hub.title} cache")


# ---- the formulas ----------------------------------------------------------------------------------------

def adapted(lora) -> set[str]:
    """The module names a LoraSpec's target_modules adapts ("all-linear": every Linear of a layer)."""
    targets = lora.target_modules
    return set(LINEAR_NAMES) if targets == "all-linear" else {targets} if isinstance(targets, str) else set(targets)


def lora_params(shape: Shape, lora) -> int:
    """T of a LoRA adapter (LoraSpec): r*(in + out) per adapted Linear (+ out for DoRA), in every layer."""
    names = adapted(lora)
    per_layer = sum(lora.r * (i + o) + (o if lora.use_dora else 0)
                    for name, (i, o) in shape.linears().items() if name in names)
    head = lora.r * (shape.vocab + shape.hidden) * len(names & {"lm_head", "embed_tokens"})
    return shape.layers * per_layer + head


def lora_dropout_inputs(shape: Shape, lora) -> int:
    """Elements per token and layer that LoRA's dropout keeps: each adapted Linear's input, once more."""
    if not lora.dropout:
        return 0
    names = adapted(lora)
    return sum(i for name, (i, _) in shape.linears().items() if name in names)


def activation_bytes(shape: Shape, tokens: int, seq: int, f: int, checkpointing: bool, extra_per_layer: float = 0,
                     eager: bool = False) -> int:
    """Saved activations of a forward over `tokens` tokens in rows of `seq` (see the module docstring)."""
    e = 8 * shape.hidden + 2 * shape.kv + 4 * shape.intermediate + (shape.heads * seq if eager else 0)
    per_layer = e * f + extra_per_layer
    if checkpointing:
        return int(tokens * (shape.layers * shape.hidden * f + per_layer))
    return int(tokens * shape.layers * per_layer)


def resident_activations(shape: Shape, tokens: int, seq: int, f: int, checkpointing: bool, extra_per_layer: float,
                         device: str, lora: bool) -> int:
    """What the activations hold of the device: the saved tensors on a GPU; on CPU, the resident memory
    measured against them (CPU_RESIDENT)."""
    if device == "cuda":
        return activation_bytes(shape, tokens, seq, f, checkpointing, extra_per_layer)
    resident = (activation_bytes(shape, tokens, seq, f, False, extra_per_layer)
                * CPU_RESIDENT["lora" if lora else "full"])
    return int(resident * (CPU_RESIDENT["checkpointing"] if checkpointing else 1))


def fused_logits_bytes(shape: Shape, tokens: int, f: int, head_trained: bool, device: str = "cpu") -> int:
    """TRL's fused LM head: tiles of the logits (on a CPU in float32, tasks.lm_head's chunks and the
    log-probabilities it keeps for the backward), the float32 gradients of the hidden states (and of the head)."""
    from tasks.lm_head import CHUNK_ELEMENTS, SAVED_ELEMENTS

    logits = tokens * shape.vocab
    if device == "cpu" and f == 4:
        tiles = 4 * (min(logits, SAVED_ELEMENTS) + LEAN_CHUNKS * min(logits, CHUNK_ELEMENTS))
    else:
        tiles = FUSED_TILES[device] * min(tokens, TOKEN_TILE) * min(shape.vocab, VOCAB_TILE) * f
    return tiles + 4 * tokens * shape.hidden + (4 * shape.vocab * shape.hidden if head_trained else 0)


def full_logits_bytes(shape: Shape, tokens: int, copies: int = 3) -> int:
    return copies * tokens * shape.vocab * 4


def kv_cache_bytes(shape: Shape, tokens: int, f: int) -> int:
    """transformers' generate: keys and values of every layer for `tokens` tokens in all sequences."""
    return 2 * shape.layers * shape.kv * f * tokens


def classifier_params(shape: Shape) -> int:
    """The reward model: the body without an untied LM head, plus a one-output score head."""
    return shape.total_params() - (0 if shape.tied else shape.vocab * shape.hidden) + shape.hidden


# ---- what runs where --------------------------------------------------------------------------------------

@dataclass
class Device:
    kind: str  # "cpu" or "cuda"
    name: str
    free: int
    total: int


def devices() -> dict[str, Device]:
    """CPU RAM (psutil), and GPU 0 (torch.cuda.mem_get_info) when an NVIDIA GPU is visible."""
    import psutil

    from serving.lifecycle import has_gpu

    ram = psutil.virtual_memory()
    found = {"cpu": Device("cpu", "CPU RAM", ram.available, ram.total)}
    if has_gpu():
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info(0)
            found["cuda"] = Device("cuda", f"GPU 0 ({torch.cuda.get_device_name(0)})", free, total)
    return found


@dataclass
class Estimate:
    """One stage's peak: the parts of the process that does the work, and what else is alive meanwhile."""

    stage: str  # the task's name: train_sft, merge, evaluate, ...
    key: str  # the spec's name: sft, merge, evaluate, ...
    process: str
    device: str  # "cpu" or "cuda"
    trainable: str = ""
    dtype: str = ""
    parts: dict[str, int] = field(default_factory=dict)
    copies: int = 1  # processes on this machine that each hold `parts` (training processes on a CPU host)
    beside: dict[str, int] = field(default_factory=dict)

    @property
    def peak(self) -> int:
        return sum(self.parts.values())

    @property
    def need(self) -> int:
        return self.peak * self.copies + sum(self.beside.values())

    def breakdown(self) -> str:
        parts = [f"{name} {gib(size)}" for name, size in self.parts.items() if size >= 0.005 * GIB]
        text = ", ".join(parts)
        if self.copies > 1:
            text = f"{self.copies} processes x ({text})"
        return text + "".join(f", {name} {gib(size)}" for name, size in self.beside.items())


PARTS = ("weights", "gradients", "optimizer", "activations", "logits", "reference", "kv cache", "reward model",
         "overhead")


def parts(**sizes: float) -> dict[str, int]:
    """The named parts that are not empty, in PARTS order (keywords use '_' for ' ')."""
    named = {name.replace("_", " "): int(size) for name, size in sizes.items()}
    return {name: named[name] for name in PARTS if named.get(name)}


@dataclass
class Context:
    """What every stage's estimate reads: the shape, the devices, the run's settings that cross stages."""

    shape: Shape
    gpu: bool
    trainer_length: int = 512  # the last trainer's max_length: how long the texts later stages see are
    adapter: bool = False  # the model so far is an adapter (merge runs; sample/judge merge it first)
    green: bool = False  # the candidate's vLLM server stays up from evaluate to deploy
    deploy: object = None
    quantized: str = "none"


PAIRED = ("train_reward_model", "train_dpo", "train_kto", "train_orpo", "train_cpo")  # 2 rows per example


def trainer_estimate(ctx: Context, key: str, stage: str, config) -> Estimate:
    """A trainer stage's child process (one per GPU; on a CPU host, `resources.processes` of them beside
    their `accelerate launch` parent)."""
    shape, tuner = ctx.shape, getattr(config, "tuner", "full")
    P = classifier_params(shape) if stage == "train_reward_model" else shape.total_params()
    T = P if tuner == "full" else lora_params(shape, config.lora)
    f = 2 if ctx.gpu else 4 if tuner == "qlora" else shape.w  # bytes per activation
    sizes = dict(training_state(shape, config, tuner, P, T), **forward_sizes(ctx, stage, config, tuner, f),
                 reference=reference_bytes(stage, config, P * shape.w),
                 overhead=OVERHEAD["cuda_context" if ctx.gpu else "trainer"])  # on a GPU the process is in RAM
    trainable = "full" if tuner == "full" else f"{tuner} {count(T)}"
    return Estimate(stage, key, "trainer process", "cuda" if ctx.gpu else "cpu", trainable, short_dtype(shape.dtype),
                    parts(**sizes), copies=1 if ctx.gpu else config.resources.processes or 1,
                    beside={} if ctx.gpu else {"launcher": OVERHEAD["launcher"]})


def training_state(shape: Shape, config, tuner: str, P: int, T: int) -> dict:
    """Weights, gradients and AdamW's states, as DeepSpeed ZeRO shares them out (or not)."""
    t = shape.w if tuner == "full" else 4
    weights = P * shape.w if tuner != "qlora" else \
        linear_params(shape) * NF4_BYTES + (P - linear_params(shape)) * shape.w
    N, zero = processes(config), config.resources.deepspeed
    if zero == "none":
        return dict(weights=weights, gradients=T * t, optimizer=2 * T * t)
    return dict(weights=weights / N if zero == "zero3" else weights, gradients=T * t / N,
                optimizer=(8 + (4 if t < 4 else 0)) * T / N)


def forward_sizes(ctx: Context, stage: str, config, tuner: str, f: int) -> dict:
    """Activations and logits of one step's forward and backward (and GRPO's generation and reward model)."""
    shape, args = ctx.shape, config.trainer_args or {}
    b = int(args.get("per_device_train_batch_size", config.batch_size))
    s = int(args.get("max_length", config.max_length))
    s += config.max_completion_length if stage == "train_grpo" else 0
    n = b * s * (2 if stage in PAIRED else 1)
    device, lora = "cuda" if ctx.gpu else "cpu", tuner != "full"
    checkpointing = bool(args.get("gradient_checkpointing", ctx.gpu))  # trl_args turns it on where CUDA is
    dropout = lora_dropout_inputs(shape, config.lora) * (f + 1) if lora and keeps_dropout(stage, args) else 0
    sizes = dict(activations=resident_activations(shape, n, s, f, checkpointing, dropout, device, lora),
                 logits=logits_bytes(stage, shape, n, f, not lora, device))
    if stage == "train_grpo":
        sizes["kv_cache"] = kv_cache_bytes(shape, n, f)
        sizes["reward_model"] = classifier_params(shape) * shape.w if config.rewards.reward_model else 0
    return sizes


def processes(config) -> int:
    """N: training processes in all (per machine x machines, or the Ray workers)."""
    if config.resources.engine == "ray":
        return config.resources.workers
    return (config.resources.processes or 1) * config.resources.machines


def keeps_dropout(stage: str, trainer_args: dict) -> bool:
    """TRL turns dropout off in every trainer but SFT and GRPO (`disable_dropout`, default True elsewhere):
    then LoRA's dropout keeps nothing."""
    if stage == "train_sft":
        return True
    return not trainer_args.get("disable_dropout", stage != "train_grpo")


def logits_bytes(stage: str, shape: Shape, tokens: int, f: int, head_trained: bool, device: str = "cpu") -> int:
    if stage == "train_reward_model":
        return 0
    if stage in ("train_orpo", "train_cpo"):
        return full_logits_bytes(shape, tokens)
    return fused_logits_bytes(shape, tokens, f, head_trained, device)


def reference_bytes(stage: str, config, weights: float) -> float:
    """A second copy of the weights: DPO and KTO fully fine-tuned; GRPO with beta > 0 and full."""
    if getattr(config, "tuner", "full") != "full":
        return 0
    if stage in ("train_dpo", "train_kto") or (stage == "train_grpo" and config.beta > 0):
        return weights
    return 0


def flow_estimate(ctx: Context, key: str, stage: str, sizes: dict, extra_overhead: int = 0,
                  beside: dict | None = None) -> Estimate:
    """A stage that works in the flow's own process, in CPU RAM."""
    sizes = dict(sizes, overhead=OVERHEAD["flow"] + extra_overhead)
    return Estimate(stage, key, "flow process", "cpu", "", short_dtype(ctx.shape.dtype), parts(**sizes),
                    beside=beside or {})


def merge_estimate(ctx: Context) -> Estimate:
    """Two copies (base+adapter, merged) and their logits on 8 probe prompts, the difference and its abs."""
    shape = ctx.shape
    probe = 8 * min(ctx.trainer_length, 512)
    return flow_estimate(ctx, "merge", "merge", dict(weights=2 * shape.total_params() * shape.w,
                                                     logits=full_logits_bytes(shape, probe, copies=4)))


def quantize_estimate(ctx: Context, config) -> Estimate:
    """The model, and up to 2 bytes a weight for GPTQ's quantized copy and the compressed state dict written on
    save (measured); llm-compressor's cache of every calibration sample's layer inputs and outputs; one
    layer's GPTQ Hessians (float32, in x in per Linear)."""
    shape = ctx.shape
    cache = 2 * config.calibration_samples * config.max_length * shape.hidden * shape.w
    hessians = 4 * sum(i * i for i, _ in shape.linears().values())
    return flow_estimate(ctx, "quantize", "quantize",
                         dict(weights=shape.total_params() * (shape.w + 2), activations=cache + hessians),
                         OVERHEAD["llmcompressor"])


def generate_sizes(ctx: Context, sequences: int, tokens: int) -> dict:
    """transformers' generate: the weights (an adapter chain is merged into them in place), the KV cache,
    the last position's logits."""
    shape = ctx.shape
    return dict(weights=shape.total_params() * shape.w, kv_cache=kv_cache_bytes(shape, sequences * tokens, shape.w),
                logits=2 * sequences * shape.vocab * 4)


def sample_estimate(ctx: Context, key: str, config) -> Estimate:
    """On-policy answers: vLLM's offline engine, or transformers' generate in the flow's process."""
    if config.engine == "vllm" or (config.engine == "auto" and ctx.gpu):
        return vllm_estimate(ctx, key, "sample", process="vLLM offline engine")
    sequences = config.batch_size * config.k
    return flow_estimate(ctx, key, "sample", generate_sizes(ctx, sequences, ctx.trainer_length + config.max_tokens))


def judge_estimate(ctx: Context, config, beside: dict) -> Estimate:
    """Greedy answers from the candidate, then the SFT policy, one at a time; then the reward model scores."""
    sizes = generate_sizes(ctx, config.batch_size, ctx.trainer_length + config.max_tokens)
    sizes["reward_model"] = classifier_params(ctx.shape) * ctx.shape.w
    return flow_estimate(ctx, "judge", "judge", sizes, beside=beside)


def score_estimate(ctx: Context, key: str) -> Estimate:
    shape = ctx.shape
    return flow_estimate(ctx, key, "score", dict(reward_model=classifier_params(shape) * shape.w))


def served_weight_bytes(shape: Shape, quantized: str = "none") -> float:
    """The served model's weights: vLLM computes in 16 bits (dtype auto turns float32 into bfloat16), so 2
    bytes a weight; quantized Linears at 1 byte (int8, fp8) or 0.5 (int4)."""
    per_linear = {"w8a8": 1, "int8_weight_only": 1, "fp8": 1, "w4a16": 0.5}.get(quantized, 2)
    return linear_params(shape) * per_linear + (shape.total_params() - linear_params(shape)) * 2


def vllm_kv_bytes() -> int:
    """What vLLM reserves for its KV cache: VLLM_CPU_KVCACHE_SPACE GiB on CPU (serving/vllm.py sets 1)."""
    return int(float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or 1) * GIB)


def gpu_utilization(deploy) -> float:
    args = list(getattr(deploy, "extra_args", None) or [])
    for i, arg in enumerate(args):
        if arg.startswith("--gpu-memory-utilization"):
            value = arg.partition("=")[2] or (args[i + 1] if i + 1 < len(args) else "0.9")
            return float(value)
    return 0.9


def vllm_estimate(ctx: Context, key: str, stage: str, quantized: str = "none", process: str = "vLLM server",
                  beside: dict | None = None, gpu_total: int = 0, servers: int = 1) -> Estimate:
    """One vLLM server (or offline engine): the weights, the KV cache it reserves, its processes. On a GPU
    it claims gpu_memory_utilization of the device, whatever the model."""
    if ctx.gpu:
        claim = int(gpu_utilization(ctx.deploy) * gpu_total)
        return Estimate(stage, key, process, "cuda", "", "", {"kv cache": claim}, copies=servers)
    sizes = dict(weights=served_weight_bytes(ctx.shape, quantized), kv_cache=vllm_kv_bytes(),
                 overhead=OVERHEAD["vllm"])
    dtype = quantized if quantized != "none" else "fp16" if ctx.shape.dtype == "float16" else "bf16"
    return Estimate(stage, key, process, "cpu", "", dtype, parts(**sizes), beside=beside or {})


def green_server(ctx: Context) -> dict:
    """The candidate's green server, up from its evaluation until deploy switches to it (CPU RAM)."""
    if not ctx.green or ctx.gpu:
        return {}
    return {"green vLLM server": vllm_estimate(ctx, "deploy", "deploy", ctx.quantized).peak}


def evaluate_estimate(ctx: Context, config, gpu_total: int) -> Estimate:
    """engine vllm: the candidate's green server stays up while the base (and the unquantized model) get a
    scratch server with full weights, asked by EvalScope's child; on a GPU both claim their share of it.
    llm_ckpt: EvalScope's child loads the model with transformers."""
    if config.engine == "llm_ckpt":
        sizes = generate_sizes(ctx, config.batch_size, ctx.trainer_length + config.max_tokens)
        sizes["overhead"] = OVERHEAD["evalscope"]
        return Estimate("evaluate", "evaluate", "EvalScope child", "cpu", "", short_dtype(ctx.shape.dtype),
                        parts(**sizes))
    beside = dict(green_server(ctx), **{"EvalScope child": OVERHEAD["evalscope"]})
    return vllm_estimate(ctx, "evaluate", "evaluate", beside=beside, gpu_total=gpu_total,
                         servers=2 if ctx.green else 1)


# ---- the pipeline's stages --------------------------------------------------------------------------------

def trainers(spec) -> list[tuple[str, str]]:
    """(the spec's key, the stage's task name) of every trainer stage, in the flow's order."""
    from tasks.config import stage_fields
    from tasks.trainer import TrainingStage

    return [(name, kind.declaration.name) for name, kind in stage_fields(type(spec.stages)).items()
            if issubclass(kind, TrainingStage)]


def estimates(spec, shape: Shape, found: dict[str, Device] | None = None) -> list[Estimate]:
    """Every stage of `spec` that loads a model, in the flow's order, with its peak."""
    found = found if found is not None else devices()
    stages = spec.stages
    ctx = Context(shape, "cuda" in found, deploy=stages.deploy)
    gpu_total = found["cuda"].total if "cuda" in found else 0
    out = []
    for key, stage in trainers(spec):
        config = getattr(stages, key)
        if config is None:
            continue
        if getattr(config, "pairs", "offline") != "offline":
            out += [sample_estimate(ctx, key, config.sampling), score_estimate(ctx, key)]
        out.append(trainer_estimate(ctx, key, stage, config))
        if key != "reward":
            ctx.adapter = getattr(config, "tuner", "full") != "full"
            ctx.trainer_length = int((config.trainer_args or {}).get("max_length", getattr(config, "max_length", 512)))
    out += serving_estimates(spec, ctx, gpu_total)
    return out


def serving_estimates(spec, ctx: Context, gpu_total: int) -> list[Estimate]:
    """merge, quantize, evaluate, judge and deploy, as the flow decides whether each runs."""
    stages, out = spec.stages, []
    deploy = stages.deploy
    serves_adapter = ctx.adapter and deploy is not None and deploy.mode == "adapter"
    if ctx.adapter and (not serves_adapter or stages.evaluate):
        out.append(merge_estimate(ctx))
        ctx.adapter = False
    if stages.quantize and stages.quantize.method != "none":
        out.append(quantize_estimate(ctx, stages.quantize))
        ctx.quantized = stages.quantize.method
    ctx.green = bool(deploy and deploy.mode == "model" and not deploy.port and stages.evaluate
                     and stages.evaluate.engine == "vllm")
    if stages.evaluate:
        out.append(evaluate_estimate(ctx, stages.evaluate, gpu_total))
        if stages.reward and stages.judge:
            out.append(judge_estimate(ctx, stages.judge, green_server(ctx)))
    if deploy:
        out.append(vllm_estimate(ctx, "deploy", "deploy", ctx.quantized, gpu_total=gpu_total))
    return out


# ---- the check before work --------------------------------------------------------------------------------

def problems(spec) -> list[str]:
    """One line per stage that cannot fit the memory its device has free now, naming the settings that would
    make it fit. [] when everything fits, when the shapes are unknown until download, or with
    ALIGNFLOW_MEMORY_CHECK=off."""
    if os.environ.get(CHECK, "").lower() == "off":
        return []
    shape = model_shape(spec.model, spec.model_dtype)
    if isinstance(shape, str):
        return []
    found = devices()
    # a trainer on a Ray cluster (resources.engine: ray) holds its memory on the cluster's nodes, not here
    remote = {(key, stage) for key, stage in trainers(spec)
              if getattr(spec.stages, key) is not None and getattr(spec.stages, key).resources.engine == "ray"}
    return [refusal(spec, shape, e, found) for e in estimates(spec, shape, found)
            if e.need > found[e.device].free and (e.key, e.stage) not in remote]


def refusal(spec, shape: Shape, estimate: Estimate, found: dict[str, Device]) -> str:
    device = found[estimate.device]
    fixes = fitting_fixes(spec, shape, estimate, found)
    fix = ("Fix: " + "; or ".join(fixes)) if fixes else \
        "Fix: no setting of this stage is enough: a machine with more memory, or stop what holds the rest"
    return (f"stages.{estimate.key} ({estimate.stage}): needs {gib(estimate.need)} GiB of {device.name} at its peak "
            f"({estimate.breakdown()}), but {gib(device.free)} GiB is free. {fix}. Estimates: docs/MEMORY.md; "
            f"{CHECK}=off runs anyway")


def fitting_fixes(spec, shape: Shape, estimate: Estimate, found: dict[str, Device]) -> list[str]:
    """Each setting's least drastic value that makes the stage fit, with what it would then need."""
    offered, out = set(), []
    free = found[estimate.device].free
    for setting, value, change in candidate_fixes(spec, estimate, found):
        if setting in offered:
            continue
        changed = with_settings(spec, change)
        if changed is None:
            continue
        need = next(e.need for e in estimates(changed, shape, found)
                    if e.stage == estimate.stage and e.key == estimate.key)
        if need <= free:
            offered.add(setting)
            out.append(f"{setting}: {value} ({gib(need)} GiB)")
    return out


def candidate_fixes(spec, estimate: Estimate, found: dict[str, Device]) -> list[tuple[str, object, dict]]:
    """(setting, value, the change as {dotted path under stages: value}) that shrink this stage, gentlest
    first within each setting."""
    key, config = estimate.key, getattr(spec.stages, estimate.key, None)
    if estimate.stage.startswith("train_"):
        return trainer_fixes(key, config, estimate)
    if estimate.stage == "sample" and config is not None:
        return [(f"stages.{key}.sampling.batch_size", b, {f"{key}.sampling.batch_size": b})
                for b in halvings(config.sampling.batch_size)]
    if estimate.stage == "quantize":
        return [("stages.quantize.calibration_samples", n, {"quantize.calibration_samples": n})
                for n in halvings(config.calibration_samples)]
    if estimate.process.startswith("vLLM") and estimate.device == "cuda" and spec.stages.deploy:
        return [("stages.deploy.extra_args", args, {"deploy.extra_args": args})
                for args in utilization_args(spec.stages.deploy, estimate, found["cuda"])]
    return []


def trainer_fixes(key: str, config, estimate: Estimate) -> list[tuple[str, object, dict]]:
    args = config.trainer_args or {}
    prefix = f"stages.{key}"
    fixes = [(f"{prefix}.batch_size", b, {f"{key}.batch_size": b,
                                          f"{key}.trainer_args": without(args, "per_device_train_batch_size")})
             for b in halvings(int(args.get("per_device_train_batch_size", config.batch_size)))]
    if not args.get("gradient_checkpointing"):
        fixes.append((f"{prefix}.trainer_args.gradient_checkpointing", "true",
                      {f"{key}.trainer_args": dict(args, gradient_checkpointing=True)}))
    fixes += [(f"{prefix}.max_length", s, {f"{key}.max_length": s, f"{key}.trainer_args": without(args, "max_length")})
              for s in halvings(int(args.get("max_length", getattr(config, "max_length", 512))), floor=64)]
    lighter = {"full": ("lora", "qlora"), "lora": ("qlora",)}.get(getattr(config, "tuner", ""), ())
    fixes += [(f"{prefix}.tuner", t, {f"{key}.tuner": t}) for t in lighter if t in tuner_choices(config)]
    if estimate.device == "cuda" and config.resources.deepspeed != "zero3" and processes(config) > 1:
        fixes.append((f"{prefix}.resources.deepspeed", "zero3", {f"{key}.resources.deepspeed": "zero3"}))
    return fixes


def tuner_choices(config) -> tuple[str, ...]:
    import typing

    field_info = type(config).model_fields.get("tuner")
    return typing.get_args(field_info.annotation) if field_info else ()


def without(mapping: dict, name: str) -> dict:
    return {k: v for k, v in mapping.items() if k != name}


def utilization_args(deploy, estimate: Estimate, gpu: Device) -> list[list[str]]:
    """vLLM's --gpu-memory-utilization that lets `estimate.copies` servers share what the GPU has free."""
    share = math.floor(20 * gpu.free / (gpu.total * estimate.copies)) / 20
    if share < 0.1:
        return []
    kept = [a for a in deploy.extra_args if not a.startswith("--gpu-memory-utilization")]
    return [kept + [f"--gpu-memory-utilization={share:.2f}"]]


def halvings(value: int, floor: int = 1) -> list[int]:
    out, value = [], value // 2
    while value >= floor:
        out.append(value)
        value //= 2
    return out


def with_settings(spec, change: dict):
    """A copy of `spec` with stage settings changed (dotted paths under `stages`), validated like the
    spec; None when the change is refused (e.g. GRPO's batch_size must stay a multiple of num_generations)."""
    from pydantic import ValidationError

    raw = spec.model_dump(mode="json")
    for dotted, value in change.items():
        target, *path = dotted.split(".")
        node = raw["stages"][target]
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    try:
        return type(spec).model_validate(raw)
    except ValidationError:
        return None


# ---- showing it -------------------------------------------------------------------------------------------

def gib(size: float) -> str:
    value = size / GIB
    return f"{value:.1f}" if value >= 100 else f"{value:.2f}"


def count(n: int) -> str:
    """134515008 -> '134.5M', 332800 -> '332.8K', 7_241_732_096 -> '7.24B'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}" if n < 100 * scale else f"{n / scale:.1f}{unit}"
    return str(n)


def short_dtype(dtype: str) -> str:
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(dtype, dtype)
