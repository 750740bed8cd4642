"""Stage `train_sft`: supervised fine-tuning with TRL's SFTTrainer (LoRA, QLoRA or full weights).

It trains on the `tokenize` stage's output (tasks/tokens.py): token ids with the loss on the assistant's
tokens (`loss_on`), for any chat template.
Output: an `adapter` artifact (LoRA/QLoRA, recording its base) or a `model` artifact (full).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from storage import ArtifactRef
from tasks import trainer
from tasks.stage import RunContext, stage
from tasks.token_settings import LossOn, TokenizeConfig
from tasks.trainer import LoraSpec, TrainingStage

LIBRARIES = trainer.LIBRARIES


class SFTStage(TrainingStage):
    """Supervised fine-tuning (trl.SFTTrainer). `trainer_args` go to trl.SFTConfig."""

    trl_config: ClassVar[str] = "trl.trainer.sft_config.SFTConfig"  # checks trainer_args keys at spec time

    tuner: Literal["lora", "qlora", "full"] = Field(
        "lora", description="lora: a new adapter; qlora: an adapter on a 4-bit NF4 base (bitsandbytes); "
                            "full: every weight")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="adapter shape (tuner lora or qlora)")
    loss_on: LossOn = Field("assistant", description="tokens that carry loss: assistant (every assistant turn), "
                                                     "last_assistant, or all (prompts too)")
    packing: bool = Field(False, description="pack rows into max_length sequences without padding (best-fit "
                                             "decreasing; attention stays within each row, the loss mask with it)")

    def tokenize_config(self, on_bad_rows: str) -> TokenizeConfig:
        return TokenizeConfig(loss_on=self.loss_on, max_length=self.max_length, on_bad_rows=on_bad_rows)


@stage("train_sft", config=SFTStage, needs=("data.sft",), key_metric="train_loss", libraries=LIBRARIES,
       accelerator=True)
def train_sft(run: RunContext, model: ArtifactRef, data: ArtifactRef, config: SFTStage) -> ArtifactRef:
    """`data`: the `tokenize` stage's output for this model's tokenizer."""
    return trainer.run_trainer(run, model, data, config, suffix="sft", data_file="tokens.parquet")


def run_training(job: dict) -> dict:
    """Child process: train and save into job["output"]."""
    sft, tokenizer = sft_trainer(job)
    metrics = trainer.train(sft, job)
    trainer.save(sft, tokenizer, job["output"])
    return metrics


def sft_trainer(job: dict):
    """(TRL's SFTTrainer ready to train, the tokenizer) for a job."""
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    from tasks.models import load_causal_lm, load_tokenizer

    config = SFTStage.model_validate(job["config"])
    tokenizer = load_tokenizer(job["model_chain"])
    model = load_causal_lm(job["model_chain"], **quantization_kwargs(config.tuner))
    args = trainer.trl_args(SFTConfig, job)  # labels come with the data: -100 where there is no loss
    dataset = load_dataset("parquet", data_files=job["data"], split="train")
    collator = None
    if config.packing:
        dataset, collator = packed(dataset, config.max_length, tokenizer.pad_token_id)
    peft = config.lora.peft_config() if config.tuner != "full" else None
    sft = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft,
                     data_collator=collator)
    return sft, tokenizer


def packed(dataset, max_length: int, pad_token_id: int):
    """Rows packed best-fit-decreasing into sequences of at most `max_length` tokens (TRL's `pack_dataset`),
    labels moving with their tokens, and a collator that keeps each packed sequence its own batch row.

    The collator gives position ids that restart at every packed row and no attention mask, so transformers
    masks attention within each row (any attention kernel). TRL's own packing instead joins the whole batch
    into one padding-free sequence: ideal for FlashAttention's variable-length kernels, but with SDPA (CPU,
    and GPUs without FlashAttention) its attention costs grow with the square of the whole batch's length."""
    from trl import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    class PackedRows(DataCollatorForLanguageModeling):
        def torch_call(self, examples):
            batch = super().torch_call(examples)
            batch.pop("attention_mask", None)  # the position ids say where each row starts
            batch["labels"][batch["position_ids"] == 0] = -100  # no row's first token predicted from the last row
            return batch

    rows = pack_dataset(dataset.select_columns(["input_ids", "labels"]), max_length, strategy="bfd")
    return rows, PackedRows(pad_token_id=pad_token_id, return_position_ids=True)


def quantization_kwargs(tuner: str) -> dict:
    if tuner != "qlora":
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_compute_dtype=torch.float32)}
