"""Adapter validation: every check the server and the CLI run before an adapter may be served.

Each refusal is an :class:`AdapterInvalid` with a machine-readable ``code`` and a message that says what
to change. Nothing here unpickles anything: only safetensors headers and JSON are read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from loradock.core.base_model import BaseModelInfo
from loradock.core.manifest import (
    CONFIG_FILE,
    EMBEDDING_MODULES,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Manifest,
    check_name,
)
from loradock.core.template import template_sha256

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class AdapterInvalid(ValueError):
    """An adapter that must not be served. ``code`` names the check that failed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.version: tuple[int, ...] | None = None  # the folder version it was seen at (set by the server)


@dataclass(frozen=True)
class ValidationLimits:
    max_rank: int = 16
    max_bytes: int = 512 * 1024 * 1024
    force_template: bool = False


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise AdapterInvalid("missing_file", f"{what} missing: {path.name} is required in {path.parent}") from e
    except ValueError as e:
        raise AdapterInvalid("bad_json", f"{path.name} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise AdapterInvalid("bad_json", f"{path.name} must hold a JSON object")
    return data


def _target_modules(config: dict, base: BaseModelInfo) -> list[str]:
    targets = config.get("target_modules")
    if isinstance(targets, str):
        # PEFT treats a string as a regex over full module names; check it matches something of the base.
        pattern = re.compile(targets)
        matched = sorted(m for m in base.module_names if pattern.search(m))
        if not matched:
            raise AdapterInvalid(
                "unknown_target_modules",
                f"target_modules regex {targets!r} matches no module of base {base.name}",
            )
        return matched
    if not isinstance(targets, list) or not targets:
        raise AdapterInvalid("unknown_target_modules", "adapter_config.json must list target_modules")
    unknown = base.unknown_modules(targets)
    if unknown:
        known = base.projections()
        raise AdapterInvalid(
            "unknown_target_modules",
            f"target modules {unknown} do not exist in base {base.name}; it has {known}",
        )
    return list(targets)


def _check_weights(path: Path, limits: ValidationLimits, base: BaseModelInfo) -> None:
    from safetensors import safe_open

    size = path.stat().st_size
    if size > limits.max_bytes:
        raise AdapterInvalid(
            "too_large", f"{path.name} is {size} bytes; the server accepts at most {limits.max_bytes}"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            for key in keys:
                if any(f".{m}." in f".{key}" for m in EMBEDDING_MODULES) and "lora_" not in key:
                    raise AdapterInvalid(
                        "resized_embeddings",
                        f"{path.name} carries full embedding weights ({key}); resized or trained embeddings "
                        "cannot be hot-swapped on a shared base. Retrain without modules_to_save/new tokens",
                    )
                if "lora_A" in key:
                    rank = f.get_slice(key).get_shape()[0]
                    if rank > limits.max_rank:
                        raise AdapterInvalid(
                            "rank_too_high",
                            f"{key} has rank {rank}; this server accepts rank <= {limits.max_rank} "
                            "(retrain with a smaller --lora-r or raise LORADOCK_MAX_LORA_RANK)",
                        )
    except AdapterInvalid:
        raise
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise AdapterInvalid("corrupt_weights", f"{path.name} is not a readable safetensors file: {e}") from e
    if not keys:
        raise AdapterInvalid("corrupt_weights", f"{path.name} holds no tensors")


def validate_adapter(folder: Path, base: BaseModelInfo, limits: ValidationLimits | None = None) -> Manifest:
    """Check an adapter folder against the base and limits; return its manifest or raise AdapterInvalid."""
    limits = limits or ValidationLimits()
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterInvalid("not_found", f"{folder} is not an adapter folder")
    try:
        check_name(folder.name)
    except ValueError as e:
        raise AdapterInvalid("bad_name", str(e)) from e

    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise AdapterInvalid(
            "pickle_weights",
            f"pickle files {pickles} are refused (they can run code when loaded); "
            "save the adapter with safe_serialization=True (adapter_model.safetensors)",
        )
    raw_manifest = _read_json(folder / MANIFEST_FILE, "manifest")
    try:
        manifest = Manifest.model_validate(raw_manifest)
    except ValueError as e:
        raise AdapterInvalid("bad_manifest", f"manifest.json is invalid: {e}") from e
    if manifest.name != folder.name:
        raise AdapterInvalid("name_mismatch", f"manifest name {manifest.name!r} != folder name {folder.name!r}")

    config = _read_json(folder / CONFIG_FILE, "PEFT config")
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterInvalid("not_lora", f"peft_type {config.get('peft_type')!r}: only LoRA adapters are served")
    rank = int(config.get("r", 0))
    ranks = [rank, *map(int, (config.get("rank_pattern") or {}).values())]
    if max(ranks) > limits.max_rank:
        raise AdapterInvalid(
            "rank_too_high",
            f"rank {max(ranks)} is above this server's limit {limits.max_rank} "
            "(retrain with a smaller --lora-r or raise LORADOCK_MAX_LORA_RANK)",
        )
    if config.get("modules_to_save"):
        raise AdapterInvalid(
            "modules_to_save",
            f"modules_to_save={config['modules_to_save']} makes full copies of base modules, which cannot be "
            "hot-swapped on a shared base; retrain without modules_to_save",
        )
    if config.get("trainable_token_indices"):
        raise AdapterInvalid("resized_embeddings", "trainable_token_indices changes embeddings; retrain without it")
    _target_modules(config, base)

    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise AdapterInvalid("missing_file", f"{WEIGHTS_FILE} is missing in {folder}")
    _check_weights(weights, limits, base)

    if manifest.base.sha256 != base.sha256:
        raise AdapterInvalid(
            "base_mismatch",
            f"adapter was trained on base {manifest.base.name} ({manifest.base.sha256[:12]}), but this server "
            f"runs {base.name} ({base.sha256[:12]}); retrain it on this base",
        )
    current = template_sha256()
    if manifest.template_sha256 != current and not limits.force_template:
        raise AdapterInvalid(
            "template_mismatch",
            f"adapter was trained with chat template {manifest.template_sha256[:12]}, the server renders with "
            f"{current[:12]}; outputs would drift. Retrain it, or pass force to accept the drift",
        )
    return manifest
