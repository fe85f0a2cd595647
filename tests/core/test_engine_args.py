"""The one builder of engine arguments: what the CPU engine process is started with."""

from __future__ import annotations

import pytest

from loradock.core import engine_args
from loradock.core.settings import Settings
from tests.conftest import BASE_MODEL


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_args, "on_gpu", lambda: False)


def test_cpu_engine_env_bounds_the_onednn_primitive_cache(cpu) -> None:
    env = engine_args.engine_env(Settings(base_model=BASE_MODEL, cpu_threads=3))
    assert env == {"OMP_NUM_THREADS": "3", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64", "LORADOCK_COMPILE": "true"}
    env = engine_args.engine_env(Settings(base_model=BASE_MODEL, onednn_primitive_cache=0, compile=False))
    assert env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "0" and env["LORADOCK_COMPILE"] == "false"


def test_cpu_threads_default_uses_both_cores_of_a_small_machine_and_leaves_one_on_larger_ones() -> None:
    settings = Settings(base_model=BASE_MODEL)
    assert [engine_args.cpu_threads(settings, cores) for cores in (1, 2, 3, 16)] == [1, 2, 2, 15]
    assert engine_args.cpu_threads(Settings(base_model=BASE_MODEL, cpu_threads=5), 2) == 5


def test_a_value_the_user_exported_wins(cpu) -> None:
    settings = Settings(base_model=BASE_MODEL, cpu_threads=3)
    environ = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0", "PATH": "/bin"}
    applied = engine_args.apply_engine_env(settings, environ)
    assert applied == {"OMP_NUM_THREADS": "3", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0", "LORADOCK_COMPILE": "true"}
    assert environ == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0", "PATH": "/bin", "OMP_NUM_THREADS": "3",
                       "LORADOCK_COMPILE": "true"}


def test_gpu_engine_env_is_vllms_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_args, "on_gpu", lambda: True)
    assert engine_args.engine_env(Settings(base_model=BASE_MODEL)) == {}


def test_negative_cache_size_is_refused() -> None:
    with pytest.raises(ValueError, match="onednn_primitive_cache"):
        Settings(base_model=BASE_MODEL, onednn_primitive_cache=-1)


def test_cli_flags_spell_the_same_arguments() -> None:
    flags = engine_args.cli_flags({"max_loras": 4, "enable_lora": True, "enforce_eager": False,
                                   "served_model_name": ["a", "b"], "compilation_config": {"mode": 0}})
    assert flags == ["--max-loras", "4", "--enable-lora", "--served-model-name", "a", "b",
                     "--compilation-config", '{"mode": 0}']


def test_cpu_compilation_needs_a_cxx_compiler(cpu, monkeypatch) -> None:
    """Compiled by default, eager when asked, and eager (not a failed start) where no C++ compiler exists."""
    monkeypatch.delenv("LORADOCK_COMPILE", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(engine_args.shutil, "which", lambda name: "/usr/bin/g++" if name == "g++" else None)
    assert engine_args.engine_kwargs(Settings(base_model=BASE_MODEL))["compilation_config"]["mode"] == 3
    assert engine_args.engine_kwargs(Settings(base_model=BASE_MODEL, compile=False))["compilation_config"]["mode"] == 0
    assert engine_args.engine_env(Settings(base_model=BASE_MODEL))["LORADOCK_COMPILE"] == "true"
    assert engine_args.cpu_compilation(False)["mode"] == 3
    assert engine_args.cpu_compilation(True)["mode"] == 0
    monkeypatch.setattr(engine_args.shutil, "which", lambda name: None)
    assert engine_args.cpu_compilation(False)["mode"] == 0
    monkeypatch.setenv("CXX", "/opt/cc/bin/g++")
    assert engine_args.cpu_compilation(False)["mode"] == 3
