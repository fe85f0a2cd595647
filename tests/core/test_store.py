"""The adapter store and its validation: each kind of bad adapter is refused with its own message."""

from __future__ import annotations

import json
import os
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


# -- versions: immutable, content-addressed snapshots -------------------------------------------------------
def _ingest(store: AdapterStore, base_info, name: str = "good"):
    limits = ValidationLimits()
    return store.versions.ingest(name, store.path(name), limits,
                                 lambda folder, n: validate_adapter(folder, base_info, limits, name=n))


def test_versions_are_validated_read_only_snapshots_with_number_and_hash(good, tmp_path, base_info):
    store = AdapterStore(tmp_path / "s")
    store.copy_from(good, validate_adapter(good, base_info))
    first = _ingest(store, base_info)
    assert first.current == 1 and first.created is not None and first.created.label == "good@1"
    snap = first.created.folder
    assert snap.parent.name == "good" and snap.name.startswith("1-") and snap.parent.parent.name == ".versions"
    stamped = json.loads((snap / "manifest.json").read_text())
    assert stamped["version"] == 1 and stamped["content_sha256"].startswith(snap.name.split("-")[1])
    assert all(f.stat().st_mode & 0o222 == 0 for f in snap.iterdir())
    assert not _ingest(store, base_info).changed  # nothing changed: nothing copied
    # Rewriting a published file in place is noticed and makes a new version; the old one is untouched.
    old_weights = (snap / "adapter_model.safetensors").read_bytes()
    weights = load_file(store.path("good") / "adapter_model.safetensors")
    weights = {k: v * 2 for k, v in weights.items()}
    save_file(weights, store.path("good") / "adapter_model.safetensors")
    second = _ingest(store, base_info)
    assert second.current == 2 and (snap / "adapter_model.safetensors").read_bytes() == old_weights
    assert [v.number for v in store.versions.versions("good")] == [1, 2]


def test_rollback_remove_and_undo(good, tmp_path, base_info):
    store = AdapterStore(tmp_path / "s")
    store.copy_from(good, validate_adapter(good, base_info))
    _ingest(store, base_info)
    _edit(store.path("good") / "manifest.json", description="second")
    assert _ingest(store, base_info).current == 2
    assert store.versions.rollback("good").number == 1
    assert not _ingest(store, base_info).changed and store.versions.current("good").number == 1  # stays rolled back
    assert store.versions.rollback("good", to=2).number == 2
    with pytest.raises(StoreError, match=r"version 7 of 'good' is not kept; kept versions: \[1, 2\]"):
        store.versions.rollback("good", to=7)
    store.remove("good")
    assert store.names() == [] and store.versions.current("good") is None
    assert not _ingest(store, base_info).changed
    assert store.versions.rollback("good").number == 2  # a removal can be undone while versions are kept
    store.remove("good")
    with pytest.raises(StoreError, match="not found"):
        store.remove("good")


def test_a_broken_republish_is_refused_loudly_and_rollback_still_works(good, tmp_path, base_info):
    store = AdapterStore(tmp_path / "s")
    store.copy_from(good, validate_adapter(good, base_info))
    _ingest(store, base_info)
    (store.path("good") / "adapter_model.safetensors").write_bytes(b"junk")
    refused = _ingest(store, base_info)
    assert refused.current is None and refused.refusal.code == "corrupt_weights"  # never a silent fallback
    assert store.versions.rollback("good").number == 1


def test_gc_keeps_the_newest_and_the_current_and_never_a_leased_version(good, tmp_path, base_info):
    store = AdapterStore(tmp_path / "s")
    store.copy_from(good, validate_adapter(good, base_info))
    for i in range(5):
        _edit(store.path("good") / "manifest.json", description=f"v{i}")
        _ingest(store, base_info)
    store.versions.rollback("good", to=1)
    held = store.versions.lease(store.versions.find("good", 2))
    assert held is not None
    store.versions.gc("good", keep=2)
    assert [v.number for v in store.versions.versions("good")] == [1, 2, 4, 5]  # 1 current, 2 in use
    held.release()
    store.versions.gc("good", keep=2)
    assert [v.number for v in store.versions.versions("good")] == [1, 4, 5]
    _edit(store.path("good") / "manifest.json", description="new")
    assert _ingest(store, base_info).current == 6  # numbers are never reused


def test_a_validated_publish_never_shows_a_refused_adapter(good, tmp_path, base_info):
    store = AdapterStore(tmp_path / "s")
    manifest = validate_adapter(good, base_info)
    limits = ValidationLimits()

    def check(folder, name):
        return validate_adapter(folder, base_info, limits, name=name)

    with store.staging("good") as tmp:
        for f in good.iterdir():
            if f.name != "manifest.json":
                (tmp / f.name).write_bytes(f.read_bytes())
        (tmp / "adapter_model.safetensors").write_bytes(b"junk")
        with pytest.raises(AdapterInvalid, match="safetensors"):
            store.publish(tmp, manifest, limits=limits, validator=check)
    assert store.names() == [] and store.versions.current("good") is None
    with store.staging("good") as tmp:
        for f in good.iterdir():
            if f.name != "manifest.json":
                (tmp / f.name).write_bytes(f.read_bytes())
        store.publish(tmp, manifest, limits=limits, validator=check)
    assert store.names() == ["good"] and store.versions.current("good").number == 1  # current before any scan
    assert not _ingest(store, base_info).changed


def test_store_entries_name_what_cannot_be_an_adapter(tmp_path):
    store = AdapterStore(tmp_path / "s")
    store.root.mkdir()
    (store.root / "Bad Name").mkdir()
    (store.root / "notes.txt").write_text("x")
    os.mkfifo(store.root / "pipe")
    (store.root / "link").symlink_to(tmp_path)
    (store.root / "ok").mkdir()
    found = {e.entry: (e.name, e.refusal.code if e.refusal else None) for e in store.entries()}
    assert found == {"Bad Name": (None, "bad_name"), "notes.txt": (None, "not_a_folder"),
                     "pipe": (None, "not_a_folder"), "link": (None, "symlink"), "ok": ("ok", None)}
