"""Adapter validation: every check the server and the CLI run before an adapter may be served.

:func:`validate_adapter` is total: whatever the folder holds, it returns the manifest or raises
:class:`AdapterInvalid` with a machine-readable ``code`` and a message that says what to change. Files are
read by validate_files (regular files only, no symlinks, size caps, bounded JSON); the weights are checked
tensor by tensor against the base by validate_tensors. Nothing is unpickled, and no regular expression is
built from an adapter's config: ``target_modules`` and rank patterns are resolved against the base's names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loradock.core.base_model import BaseModelInfo
from loradock.core.manifest import CONFIG_FILE, EMBEDDING_MODULES, MANIFEST_FILE, WEIGHTS_FILE, Manifest, check_name
from loradock.core.template import template_sha256
from loradock.core.validate_files import (
    JSON_MAX_BYTES,
    OTHER_MAX_BYTES,
    AdapterInvalid,
    list_files,
    open_folder,
    read_json,
)
from loradock.core.validate_tensors import check_tensors, read_header

__all__ = ["AdapterInvalid", "ValidationLimits", "validate_adapter", "file_cap"]
log = logging.getLogger(__name__)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# PEFT features that change what the adapter computes and that vLLM does not implement (or reads wrongly).
UNSUPPORTED = ("use_dora", "lora_bias", "use_qalora", "use_bdlora", "alora_invocation_tokens", "layer_replication",
               "arrow_config", "target_parameters", "kasa_config", "monteclora_config", "velora_config")
INIT_ONLY = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")  # inits vLLM accepts (they leave the base as is)
_PATTERN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")


@dataclass(frozen=True)
class ValidationLimits:
    max_rank: int = 16
    max_bytes: int = 512 * 1024 * 1024
    force_template: bool = False


def file_cap(name: str, limits: ValidationLimits) -> int:
    """The largest size accepted for a file of an adapter folder."""
    if name == WEIGHTS_FILE:
        return limits.max_bytes
    return JSON_MAX_BYTES if name.endswith(".json") else OTHER_MAX_BYTES


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _pattern_matches(key: str, module: str) -> bool:
    """vLLM's ``re.match(rf"(.*\\.)?({key})$", module)`` for keys of [A-Za-z0-9_.] ('.' is any character)."""
    starts = [0, *(i + 1 for i, c in enumerate(module) if c == ".")]
    return any(len(module) - s == len(key) and all(k in (".", c) for k, c in zip(key, module[s:], strict=True))
               for s in starts)


def _targets(value: Any, base: BaseModelInfo) -> set[str]:
    """The short module names ``target_modules`` selects, resolved against the base's own module names."""
    linear = {m for m, shape in base.weight_shapes.items() if len(shape) == 2}
    if isinstance(value, str):
        if value == "all-linear":
            return {m.rsplit(".", 1)[-1] for m in linear} - set(EMBEDDING_MODULES)
        if value in {m.rsplit(".", 1)[-1] for m in linear}:
            return {value}
        raise AdapterInvalid("unknown_target_modules", f"target_modules is the string {value[:80]!r}: PEFT reads a "
                             "string as a regular expression, which this server does not evaluate; list module "
                             f"names instead, e.g. {base.projections()[:2]}")
    if not isinstance(value, list) or not value or len(value) > 256:
        raise AdapterInvalid("unknown_target_modules", "adapter_config.json must list target_modules (1-256 names)")
    if not all(isinstance(t, str) and 0 < len(t) <= 200 for t in value):
        raise AdapterInvalid("bad_config", "target_modules must be a list of module names (strings), e.g. "
                                           '["q_proj", "v_proj"]')
    found: set[str] = set()
    unknown, not_linear = [], []
    for target in value:
        matched = {m for m in base.weight_shapes if m == target or m.endswith("." + target)}
        if not matched:
            unknown.append(target)
        elif not matched & linear:
            not_linear.append(target)
        found |= {m.rsplit(".", 1)[-1] for m in matched & linear}
    if unknown:
        raise AdapterInvalid("unknown_target_modules", f"target modules {sorted(unknown)} do not exist in base "
                                                       f"{base.name}; it has {base.projections()}")
    if not_linear:
        raise AdapterInvalid("unknown_target_modules", f"target modules {sorted(not_linear)} are not linear layers "
                                                       f"of base {base.name}; LoRA targets {base.projections()}")
    return found


def _pattern(config: dict[str, Any], key: str, is_value: Any, what: str) -> dict[str, Any]:
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 1024:
        raise AdapterInvalid("bad_config", f"{key} must be an object of module name -> {what}, not "
                                           f"{type(value).__name__}")
    for k, v in value.items():
        if not (0 < len(k) <= 200 and set(k) <= _PATTERN_CHARS):
            raise AdapterInvalid("bad_config", f"{key} key {k[:80]!r} must be a module name (letters, digits, "
                                               "'_' and '.'); patterns are not evaluated")
        if not is_value(v):
            raise AdapterInvalid("bad_config", f"{key}[{k!r}] must be {what}, got {v!r:.40}")
    return value


def check_config(config: dict[str, Any], base: BaseModelInfo,
                 limits: ValidationLimits) -> tuple[set[str], dict[str, int]]:
    """The PEFT config's own checks; returns the targeted short names and the rank of each base module."""
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise AdapterInvalid("not_lora", f"peft_type {peft_type!r:.40}: only LoRA adapters are served")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise AdapterInvalid("bad_config", f"adapter_config.json: r must be a positive integer, got {r!r:.40}")
    if not _is_number(config.get("lora_alpha")):
        raise AdapterInvalid("bad_config", "adapter_config.json: lora_alpha must be a number")
    ranks = _pattern(config, "rank_pattern", lambda v: _is_int(v) and v > 0, "a positive integer")
    _pattern(config, "alpha_pattern", _is_number, "a number")
    top = max([r, *ranks.values()])
    if top > limits.max_rank:
        raise AdapterInvalid("rank_too_high", f"rank {top} is above this server's limit {limits.max_rank} "
                                              "(retrain with a smaller --lora-r or raise LORADOCK_MAX_LORA_RANK)")
    if config.get("modules_to_save"):
        raise AdapterInvalid("modules_to_save", f"modules_to_save={config['modules_to_save']!r:.80} makes full copies "
                             "of base modules, which cannot be hot-swapped on a shared base; retrain without it")
    if config.get("trainable_token_indices"):
        raise AdapterInvalid("resized_embeddings", "trainable_token_indices changes embeddings; retrain without it")
    used = [k for k in UNSUPPORTED if config.get(k)]
    if used or config.get("bias", "none") != "none":
        raise AdapterInvalid("unsupported_feature", f"adapter_config.json uses {used or ['bias']}, which the "
                                                    "engine does not implement; train a plain LoRA adapter")
    init = config.get("init_lora_weights", True)
    if not (isinstance(init, bool) or (isinstance(init, str) and init.lower() in INIT_ONLY)):
        raise AdapterInvalid("unsupported_feature", f"init_lora_weights={init!r:.40} modifies the base weights; "
                                                    "convert it to a plain LoRA adapter first")
    if not isinstance(config.get("use_rslora", False), bool):
        raise AdapterInvalid("bad_config", "adapter_config.json: use_rslora must be true or false")
    targets = _targets(config.get("target_modules"), base)
    rank_of: dict[str, int] = {}
    for module in base.weight_shapes:
        if module.rsplit(".", 1)[-1] in targets:
            rank_of[module] = next((v for k, v in ranks.items() if _pattern_matches(k, module)), r)
    return targets, rank_of


def _validate(folder: Path, base: BaseModelInfo, limits: ValidationLimits, name: str) -> Manifest:
    try:
        check_name(name)
    except ValueError as e:
        raise AdapterInvalid("bad_name", str(e)) from e
    with open_folder(folder) as dfd:
        files = {f.name: f for f in list_files(dfd, name)}
        pickles = sorted(n for n in files if n.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise AdapterInvalid("pickle_weights", f"pickle files {pickles} are refused (they can run code when "
                                 "loaded); save the adapter with safe_serialization=True (adapter_model.safetensors)")
        for f in files.values():
            if f.size > file_cap(f.name, limits):
                raise AdapterInvalid("too_large", f"{f.name} is {f.size} bytes; the server accepts at most "
                                                  f"{file_cap(f.name, limits)}")
        if any(n.startswith("new_embeddings") for n in files):
            raise AdapterInvalid("resized_embeddings", "new_embeddings.* adds tokens to the base; retrain without "
                                                       "new tokens")
        try:
            manifest = Manifest.model_validate(read_json(dfd, MANIFEST_FILE, "manifest"))
        except ValueError as e:
            if isinstance(e, AdapterInvalid):
                raise
            raise AdapterInvalid("bad_manifest", f"manifest.json is invalid: {e}") from e
        if manifest.name != name:
            raise AdapterInvalid("name_mismatch", f"manifest name {manifest.name!r} != folder name {name!r}")
        if manifest.base.sha256 != base.sha256:
            raise AdapterInvalid(
                "base_mismatch",
                f"adapter was trained on base {manifest.base.name} ({manifest.base.sha256[:12]}), but this server "
                f"runs {base.name} ({base.sha256[:12]}); retrain it on this base")
        current = template_sha256()
        if manifest.template_sha256 != current and not limits.force_template:
            raise AdapterInvalid(
                "template_mismatch",
                f"adapter was trained with chat template {manifest.template_sha256[:12]}, the server renders with "
                f"{current[:12]}; outputs would drift. Retrain it, or pass force to accept the drift")
        targets, rank_of = check_config(read_json(dfd, CONFIG_FILE, "PEFT config"), base, limits)
        if WEIGHTS_FILE not in files:
            raise AdapterInvalid("missing_file", f"{WEIGHTS_FILE} is missing in {name}")
        tensors = read_header(dfd, WEIGHTS_FILE, limits.max_bytes)
        check_tensors(tensors, base, targets, rank_of, limits.max_rank, WEIGHTS_FILE)
    return manifest


def validate_adapter(folder: Path, base: BaseModelInfo, limits: ValidationLimits | None = None,
                     name: str | None = None) -> Manifest:
    """Check an adapter folder against the base and limits; return its manifest or raise AdapterInvalid.

    ``name`` is the adapter name the folder must carry (default: the folder's name; a version snapshot
    lives in a folder named after its version).
    """
    folder = Path(folder)
    try:
        return _validate(folder, base, limits or ValidationLimits(), folder.name if name is None else name)
    except AdapterInvalid:
        raise
    except Exception as e:  # the guarantee: nothing but a refusal leaves this function
        log.exception("unexpected error while validating %s", folder)
        raise AdapterInvalid("unreadable", f"adapter folder {folder.name!r} could not be checked "
                                           f"({type(e).__name__}: {e})") from e
