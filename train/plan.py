"""`loradock train plan`: what a recipe will train and what it costs, before any training.

The model is built on PyTorch's meta device (shapes, no weights), so planning a 7B base costs nothing.
Memory follows the lesson's arithmetic, computed for the real model: bytes per parameter at each precision,
plus gradients and AdamW state for whatever is trainable. Only ``nn.Linear`` weights of the decoder are
quantized by bitsandbytes; embeddings and norms stay 16-bit, so int8/int4 figures count them at 2 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loradock.train.config import TrainConfig

PRECISIONS = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}
ADAM_BYTES = 8.0  # AdamW keeps two fp32 moments per trainable parameter
NF4_DOUBLE_QUANT_BITS = 0.127  # per-parameter cost of NF4 block constants with double quantization
SAFETENSORS_ENTRY_BYTES = 70  # JSON header bytes per tensor besides its name


@dataclass(frozen=True)
class Plan:
    """Parameter counts and memory estimates (bytes) for one recipe on one base."""

    base_name: str
    trainable: int
    total: int
    quantizable: int
    adapter_bytes: int
    memory: dict[str, dict[str, float | None]]
    activations_bytes: float
    trainable_line: str

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total


def make_plan(cfg: TrainConfig, base_path: Path, base_name: str) -> Plan:
    """Build the LoRA model on the meta device and compute the numbers."""
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from loradock.train.common import lora_config, trainable_summary

    config = AutoConfig.from_pretrained(str(base_path))
    with torch.device("meta"):
        model = get_peft_model(AutoModelForCausalLM.from_config(config), lora_config(cfg))
    trainable, total, line = trainable_summary(model)
    linears = [
        m
        for name, m in model.base_model.model.named_modules()
        if isinstance(m, torch.nn.Linear) and "lora_" not in name and not name.endswith("lm_head")
    ]
    quantizable = sum(m.weight.numel() for m in linears)
    lora_names = [n.replace(".default", "") for n, p in model.named_parameters() if p.requires_grad]
    # QLoRA adapters are trained (and saved) in bf16 by TRL; float bases keep them fp32.
    adapter_dtype_bytes = 2 if cfg.quantization == "nf4" else 4
    adapter_bytes = trainable * adapter_dtype_bytes + sum(len(n) + SAFETENSORS_ENTRY_BYTES for n in lora_names)
    return Plan(
        base_name=base_name,
        trainable=trainable,
        total=total,
        quantizable=quantizable,
        adapter_bytes=adapter_bytes,
        memory=memory_table(total - trainable, quantizable, sum(m.out_features for m in linears), trainable),
        activations_bytes=activation_bytes(config, cfg.batch_size, cfg.max_length),
        trainable_line=line,
    )


def weight_bytes(total: int, quantizable: int, scale_rows: int, precision: str) -> float:
    """Bytes of the frozen base at a precision (int8/int4 quantize only the decoder's Linear layers)."""
    if precision in ("fp32", "bf16"):
        return total * PRECISIONS[precision]
    rest = total - quantizable
    # NF4: double-quantized block constants; LLM.int8: one fp32 scale per output row.
    extra = quantizable * NF4_DOUBLE_QUANT_BITS / 8 if precision == "int4" else scale_rows * 4.0
    return quantizable * PRECISIONS[precision] + extra + rest * 2.0


def memory_table(total: int, quantizable: int, scale_rows: int, trainable: int) -> dict[str, dict[str, float | None]]:
    """Rows: weights only, full FT, LoRA, QLoRA; columns: fp32, bf16, int8, int4 (None = not possible)."""
    adapter_training = trainable * (4 + 4 + ADAM_BYTES)  # fp32 adapter weights, grads and AdamW moments

    def weights(p: str) -> float:
        return weight_bytes(total, quantizable, scale_rows, p)

    rows: dict[str, dict[str, float | None]] = {}
    rows["weights only (inference)"] = {p: weights(p) for p in PRECISIONS}
    # Full fine-tuning: weights and grads at the precision, AdamW moments in fp32; int weights cannot train.
    rows["full fine-tune (AdamW)"] = {
        p: (total * (2 * b + ADAM_BYTES) if p in ("fp32", "bf16") else None) for p, b in PRECISIONS.items()
    }
    rows["LoRA (frozen float base)"] = {
        p: (weights(p) + adapter_training if p in ("fp32", "bf16") else None) for p in PRECISIONS
    }
    rows["QLoRA (frozen quantized base)"] = {
        p: (weights(p) + adapter_training if p in ("int8", "int4") else None) for p in PRECISIONS
    }
    return rows


def activation_bytes(config: Any, batch: int, seq: int) -> float:
    """Rough 16-bit activation memory without recomputation (Korthikanti et al. 2022) plus fp32 logits."""
    h = config.hidden_size
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    per_layer = seq * batch * h * (34 + 5 * heads * seq / h)
    logits = batch * seq * config.vocab_size * 4
    return layers * per_layer + logits


def human(n: float | None) -> str:
    """Bytes as a short human string (GiB/MiB/KiB)."""
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"
