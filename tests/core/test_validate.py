"""Total validation: whatever a folder holds, validate_adapter returns a manifest or raises AdapterInvalid
with a code, never another exception, and never blocks or leaves the folder."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from loradock.core.store import AdapterStore
from loradock.core.synthetic import make_synthetic_adapters
from loradock.core.validate import AdapterInvalid, ValidationLimits, validate_adapter
from tests.conftest import BASE_MODEL, REPO

WEIGHTS = "adapter_model.safetensors"
LAYER0_Q = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def good(tmp_path_factory, base_info) -> Path:
    store = AdapterStore(tmp_path_factory.mktemp("store"))
    return make_synthetic_adapters(store, base_info, ["good"])[0]


@pytest.fixture()
def adapter(good: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "good"
    shutil.copytree(good, dst)
    return dst


def _config(adapter: Path, **changes) -> None:
    path = adapter / "adapter_config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _code(adapter: Path, base_info, **limits) -> str:
    with pytest.raises(AdapterInvalid) as err:
        validate_adapter(adapter, base_info, ValidationLimits(**limits))
    assert err.value.message, "a refusal says what to fix"
    return err.value.code


@pytest.mark.parametrize(("changes", "code"), [
    ({"r": "abc"}, "bad_config"),
    ({"r": None}, "bad_config"),
    ({"r": True}, "bad_config"),
    ({"lora_alpha": "16"}, "bad_config"),
    ({"rank_pattern": ["q_proj", 4]}, "bad_config"),
    ({"rank_pattern": {"(a|b)*": 4}}, "bad_config"),
    ({"rank_pattern": {"q_proj": "4"}}, "bad_config"),
    ({"alpha_pattern": {"v_proj": [1]}}, "bad_config"),
    ({"target_modules": [["q_proj"]]}, "bad_config"),
    ({"target_modules": [{"q": 1}, "v_proj"]}, "bad_config"),
    ({"target_modules": "(a+)+$"}, "unknown_target_modules"),
    ({"target_modules": ".*\\.(q|v)_proj"}, "unknown_target_modules"),
    ({"target_modules": ["q_proj", "input_layernorm"]}, "unknown_target_modules"),
    ({"target_modules": 7}, "unknown_target_modules"),
    ({"target_modules": ["q_proj"]}, "unexpected_tensor"),  # the file also holds v_proj weights
    ({"r": 4}, "shape_mismatch"),  # the tensors are rank 8
    ({"peft_type": ["LORA"]}, "not_lora"),
    ({"use_dora": True}, "unsupported_feature"),
    ({"bias": "all"}, "unsupported_feature"),
    ({"init_lora_weights": "pissa"}, "unsupported_feature"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
])
def test_hostile_configs_are_refused_with_their_code(adapter, base_info, changes, code):
    _config(adapter, **changes)
    assert _code(adapter, base_info) == code


@pytest.mark.parametrize("changes", [{"rank_pattern": None}, {"rank_pattern": {"q_proj": 8}},
                                     {"alpha_pattern": {"model.layers.0.self_attn.q_proj": 32}},
                                     {"target_modules": "all-linear"}])
def test_config_forms_peft_writes_are_accepted(adapter, base_info, changes):
    _config(adapter, **changes)
    assert validate_adapter(adapter, base_info).name == "good"


def test_rank_pattern_is_resolved_against_the_base_without_regex(adapter, base_info):
    weights = load_file(adapter / WEIGHTS)
    weights[f"{LAYER0_Q}.lora_A.weight"] = weights[f"{LAYER0_Q}.lora_A.weight"][:4].contiguous()
    weights[f"{LAYER0_Q}.lora_B.weight"] = weights[f"{LAYER0_Q}.lora_B.weight"][:, :4].contiguous()
    save_file(weights, adapter / WEIGHTS)
    assert _code(adapter, base_info) == "shape_mismatch"  # rank 4 where the config says 8
    _config(adapter, rank_pattern={"layers.0.self_attn.q_proj": 4})
    assert validate_adapter(adapter, base_info).name == "good"


def _edit_tensors(adapter: Path, edit) -> None:
    weights = load_file(adapter / WEIGHTS)
    edit(weights)
    save_file(weights, adapter / WEIGHTS)


@pytest.mark.parametrize(("edit", "code"), [
    (lambda w: w.__setitem__(f"{LAYER0_Q}.lora_A.weight", w[f"{LAYER0_Q}.lora_A.weight"].T.contiguous()),
     "shape_mismatch"),
    (lambda w: w.__setitem__(f"{LAYER0_Q}.lora_A.weight", torch.zeros(8, 960)), "shape_mismatch"),
    (lambda w: w.__setitem__(f"{LAYER0_Q}.lora_B.weight", w[f"{LAYER0_Q}.lora_B.weight"].double()), "bad_dtype"),
    (lambda w: w.__setitem__(f"{LAYER0_Q}.lora_A.weight", torch.zeros(8, 576, dtype=torch.int32)), "bad_dtype"),
    (lambda w: w.__setitem__(LAYER0_Q.replace("layers.0", "layers.99") + ".lora_A.weight", torch.zeros(8, 576)),
     "unknown_module"),
    (lambda w: w.pop(f"{LAYER0_Q}.lora_B.weight"), "corrupt_weights"),
    (lambda w: w.__setitem__(f"{LAYER0_Q}.lora_magnitude_vector.weight", torch.ones(576)), "unexpected_tensor"),
    (lambda w: w.__setitem__("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight", torch.zeros(8, 576)),
     "unexpected_tensor"),
])
def test_every_tensor_is_checked_against_the_base_module_it_targets(adapter, base_info, edit, code):
    _edit_tensors(adapter, edit)
    assert _code(adapter, base_info) == code


def test_a_lying_safetensors_header_is_refused(adapter, base_info):
    data = (adapter / WEIGHTS).read_bytes()
    (adapter / WEIGHTS).write_bytes(struct.pack("<Q", len(data) * 4) + data[8:])
    assert _code(adapter, base_info) == "corrupt_weights"
    (adapter / WEIGHTS).write_bytes(data[: len(data) // 2])  # truncated data
    assert _code(adapter, base_info) == "corrupt_weights"


def test_deep_json_missing_files_and_too_many_files(adapter, base_info):
    (adapter / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    assert _code(adapter, base_info) == "bad_json"
    (adapter / "adapter_config.json").write_text('{"a": ' * 200 + "1" + "}" * 200)
    assert _code(adapter, base_info) == "bad_json"
    (adapter / "adapter_config.json").unlink()
    assert _code(adapter, base_info) == "missing_file"
    (adapter / "manifest.json").unlink()
    assert _code(adapter, base_info) == "missing_file"
    for i in range(70):
        (adapter / f"note-{i}.txt").write_text("x")
    assert _code(adapter, base_info) == "too_many_files"


def test_every_file_has_a_size_cap(adapter, base_info):
    (adapter / "loss_curve.png").write_bytes(b"\0" * ((16 << 20) + 1))
    assert _code(adapter, base_info) == "too_large"
    (adapter / "loss_curve.png").unlink()
    (adapter / "adapter_config.json").write_text(" " * ((1 << 20) + 1))
    assert _code(adapter, base_info) == "too_large"


def test_fifo_symlinks_and_folders_are_refused_without_blocking(adapter, base_info, tmp_path):
    outside = tmp_path / "outside.safetensors"
    shutil.move(adapter / WEIGHTS, outside)
    (adapter / WEIGHTS).symlink_to(outside)
    assert _code(adapter, base_info) == "symlink"
    (adapter / WEIGHTS).unlink()
    shutil.move(outside, adapter / WEIGHTS)
    link = tmp_path / "linked"
    link.symlink_to(adapter)
    assert _code(link, base_info) == "symlink"  # the folder itself may not be a link
    (adapter / "sub").mkdir()
    assert _code(adapter, base_info) == "not_regular_file"
    (adapter / "sub").rmdir()
    (adapter / "manifest.json").unlink()
    os.mkfifo(adapter / "manifest.json")  # reading it would wait for a writer forever
    codes: list[str] = []
    worker = threading.Thread(target=lambda: codes.append(_code(adapter, base_info)), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert codes == ["not_regular_file"]


def test_an_unreadable_folder_is_refused(good, base_info, tmp_path):
    folder = tmp_path / "good"
    shutil.copytree(good, folder)
    os.chmod(folder, 0o000)
    try:
        if os.geteuid() != 0:
            assert _code(folder, base_info) == "unreadable"
            return
        # Root reads everything: check in a child that keeps uid 0 but loses the capabilities to bypass modes.
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop the capability to read any file")
        script = ("from pathlib import Path; from loradock.core.base_model import load_base_info; "
                  "from loradock.core.validate import AdapterInvalid, validate_adapter\n"
                  f"base = load_base_info(Path({str(BASE_MODEL)!r}))\n"
                  f"try:\n    validate_adapter(Path({str(folder)!r}), base)\n    print('accepted')\n"
                  "except AdapterInvalid as e:\n    print(e.code)\n")
        out = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c",
                              script], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.stdout.strip().splitlines()[-1:] == ["unreadable"], out.stderr[-2000:]
    finally:
        os.chmod(folder, 0o755)


SCALARS = st.none() | st.booleans() | st.integers(-5, 2**40) | st.floats(allow_nan=True) | st.text(max_size=12)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=4), max_leaves=12)
KEYS = ["r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "peft_type", "bias",
        "init_lora_weights", "use_rslora", "modules_to_save", "use_dora", "layer_replication"]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(changes=st.dictionaries(st.sampled_from(KEYS), JSON, min_size=1, max_size=4))
def test_no_config_makes_validation_raise_anything_else(good, base_info, changes):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "good"
        shutil.copytree(good, folder)
        _config(folder, **changes)
        try:
            validate_adapter(folder, base_info)
        except AdapterInvalid as e:
            assert e.code and e.message
