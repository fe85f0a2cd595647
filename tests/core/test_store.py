"""The adapter store and its validation: each kind of bad adapter is refused with its own message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from loradock.core.manifest import check_name
from loradock.core.store import AdapterStore, StoreError
from loradock.core.synthetic import make_synthetic_adapters
from loradock.core.validate import AdapterInvalid, ValidationLimits, validate_adapter


@pytest.fixture(scope="module")
def good(tmp_path_factory, base_info) -> Path:
    store = AdapterStore(tmp_path_factory.mktemp("store"))
    return make_synthetic_adapters(store, base_info, ["good"])[0]


@pytest.fixture()
def adapter(good: Path, tmp_path: Path) -> Path:
    """A fresh copy of a valid adapter to break in one way."""
    import shutil

    dst = tmp_path / "victim"
    shutil.copytree(good, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["name"] = "victim"
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_valid_adapter_passes(adapter, base_info):
    m = validate_adapter(adapter, base_info)
    assert m.name == "victim" and m.rank == 8 and m.target_modules == ["q_proj", "v_proj"]


def _refused(adapter, base_info, code, fragment, **limits):
    with pytest.raises(AdapterInvalid) as err:
        validate_adapter(adapter, base_info, ValidationLimits(**limits))
    assert err.value.code == code
    assert fragment in str(err.value)


def test_pickle_weights_refused(adapter, base_info):
    (adapter / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    _refused(adapter, base_info, "pickle_weights", "safe_serialization=True")


def test_rank_above_limit_refused(adapter, base_info):
    _refused(adapter, base_info, "rank_too_high", "rank 8 is above this server's limit 4", max_rank=4)


def test_unknown_target_modules_refused(adapter, base_info):
    _edit(adapter / "adapter_config.json", target_modules=["q_proj", "query_key_value"])
    _refused(adapter, base_info, "unknown_target_modules", "['query_key_value'] do not exist")


def test_modules_to_save_refused(adapter, base_info):
    _edit(adapter / "adapter_config.json", modules_to_save=["lm_head"])
    _refused(adapter, base_info, "modules_to_save", "modules_to_save")


def test_resized_embeddings_refused(adapter, base_info):
    weights = load_file(adapter / "adapter_model.safetensors")
    weights["base_model.model.model.embed_tokens.weight"] = torch.zeros(49160, 576)
    save_file(weights, adapter / "adapter_model.safetensors")
    _refused(adapter, base_info, "resized_embeddings", "embedding weights")


def test_different_base_refused(adapter, base_info):
    _edit(adapter / "manifest.json", base={"name": "Llama-3-8B", "sha256": "0" * 64})
    _refused(adapter, base_info, "base_mismatch", "trained on base Llama-3-8B")


def test_template_mismatch_refused_unless_forced(adapter, base_info):
    _edit(adapter / "manifest.json", template_sha256="f" * 64)
    _refused(adapter, base_info, "template_mismatch", "chat template ffffffffffff")
    assert validate_adapter(adapter, base_info, ValidationLimits(force_template=True)).name == "victim"


def test_corrupt_weights_refused(adapter, base_info):
    (adapter / "adapter_model.safetensors").write_bytes(b"garbage" * 10)
    _refused(adapter, base_info, "corrupt_weights", "not a readable safetensors file")


def test_oversized_weights_refused(adapter, base_info):
    _refused(adapter, base_info, "too_large", "at most 1000", max_bytes=1000)


def test_name_mismatch_refused(adapter, base_info):
    _edit(adapter / "manifest.json", name="other")
    _refused(adapter, base_info, "name_mismatch", "'other' != folder name 'victim'")


@pytest.mark.parametrize("name", ["", "Upper", "-dash", "a/b", "..", "a" * 65, "sp ace"])
def test_bad_names_refused(name):
    with pytest.raises(ValueError, match="invalid adapter name"):
        check_name(name)


def test_publish_is_atomic_and_refuses_overwrite(good, tmp_path, base_info):
    store = AdapterStore(tmp_path / "s")
    manifest = validate_adapter(good, base_info)
    store.copy_from(good, manifest)
    assert store.names() == ["good"]
    with pytest.raises(StoreError, match="already exists"):
        store.copy_from(good, manifest)
    # A staging folder is invisible to readers until published.
    with store.staging("half") as tmp:
        (tmp / "adapter_config.json").write_text("{}")
        assert store.names() == ["good"]
    assert not any(p.name.startswith(".tmp-") for p in store.root.iterdir())
    store.remove("good")
    assert store.names() == []


def test_paths_cannot_escape_the_store(tmp_path, good, base_info):
    store = AdapterStore(tmp_path / "s")
    store.copy_from(good, validate_adapter(good, base_info))
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "link").symlink_to(outside)
    assert store.resolve_inside("good") == (store.root / "good").resolve()
    assert store.resolve_inside(str(store.root / "good")) == (store.root / "good").resolve()
    for bad, msg in [("../outside", "'..'"), (str(outside), "outside the adapter store"),
                     ("link", "outside the adapter store"), ("/etc", "outside the adapter store"),
                     ("good/sub", "directly under")]:
        with pytest.raises(StoreError, match=msg):
            store.resolve_inside(bad)
