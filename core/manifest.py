"""The adapter manifest: what every folder in the store says about itself."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
NAME_RE = re.compile(rf"^{NAME_PATTERN}$")
MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
VERSIONS_DIR = ".versions"  # immutable snapshots, one folder per published version (core/versions.py)
# Modules whose LoRA would need full embedding copies in the adapter, which a shared base cannot hot-swap.
EMBEDDING_MODULES = ("embed_tokens", "lm_head", "wte", "embed_out")


def check_name(name: str) -> str:
    """Return the name if it is a valid adapter name, else raise ValueError saying the rule."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid adapter name {name!r}: use 1-64 characters from a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name


class BaseIdentity(BaseModel):
    """Which base model an adapter was trained on."""

    name: str
    sha256: str = Field(description="SHA-256 over the base's config.json and weights files.")


class Provenance(BaseModel):
    """How the adapter was made."""

    method: Literal["sft", "dpo", "import", "synthetic"] = "sft"
    recipe: dict[str, Any] = Field(default_factory=dict, description="The resolved recipe.")
    data_sha256: str | None = None
    data_rows: int | None = None
    world_size: int = Field(default=1, description="Training processes (data-parallel ranks) trained it together.")


class Manifest(BaseModel):
    """manifest.json, beside the PEFT files of every adapter in the store."""

    name: str
    base: BaseIdentity
    template_sha256: str
    rank: int
    alpha: float
    target_modules: list[str]
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    provenance: Provenance = Field(default_factory=Provenance)
    metrics: dict[str, Any] = Field(default_factory=dict, description="Loss curves, eval results, ...")
    description: str = ""
    version: int | None = Field(None, description="Version number, set by the store in a version snapshot.")
    content_sha256: str | None = Field(
        None, description="SHA-256 over the files as published, set by the store in a version snapshot.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)
