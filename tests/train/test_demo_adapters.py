"""The shipped demo adapters validate against the base, and each records the exact data it was trained on."""

from __future__ import annotations

from pathlib import Path

import pytest

from loradock.core.store import AdapterStore
from loradock.core.validate import validate_adapter
from loradock.train.config import build_config, keys
from loradock.train.data import data_sha256

REPO = Path(__file__).resolve().parents[2]
DEMOS = ["json-answer", "pirate", "concise", "zephyr-faq"]


@pytest.mark.parametrize("name", DEMOS)
def test_demo_adapter_is_servable_and_reproducible_from_shipped_data(name, base_info):
    store = AdapterStore(REPO / "adapters")
    manifest = validate_adapter(store.path(name), base_info)
    recipe = manifest.provenance.recipe
    assert manifest.provenance.data_sha256 == data_sha256(REPO / recipe["data"]), (
        f"{name} was trained on other data than {recipe['data']}; rebuild it with scripts/build_demo_adapters.py"
    )
    shipped = build_config(manifest.provenance.method, name, {"name": name, "overwrite": True}).resolved()
    stale = {
        k: (v, shipped.get(k))
        for k, v in recipe.items()
        if k not in ("adapters_dir", "output_dir") and v != shipped.get(k)
    }
    assert not stale, f"{name} was trained with another recipe than train/recipes (trained, shipped): {stale}"
    assert manifest.rank <= 16 and (store.path(name) / "loss_curve.png").is_file()
    assert manifest.metrics["train_loss"], "the manifest must carry the loss curve"


def test_docs_list_every_recipe_key():
    doc = (REPO / "docs" / "training.md").read_text()
    missing = [f.name for f in keys() if f"`{f.name}`" not in doc]
    assert not missing, f"docs/training.md lacks recipe keys {missing}"
