"""Every model a Llama may drive implements the one Model protocol, and the Llama (completion,
forks, perplexity, close) needs nothing of its model beyond it."""

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from fitllm.api import Llama
from fitllm.distributed.pipeline import PipelineModel
from fitllm.distributed.tensor_parallel import TensorParallelModel
from fitllm.expert_cache import ExpertCache
from fitllm.gguf import GGUFFile
from fitllm.models import load_model
from fitllm.models.protocol import Model
from fitllm.perplexity import perplexity
from fitllm.server.slots import LockedModel
from tiny_models import upcycle

MEMBERS = ("hp", "forward", "new_cache", "summary", "close")
GREEDY = dict(max_tokens=12, temperature=0)
TEXT = b"The capital of France is Paris, and the capital of Germany is Berlin, and that of Spain is Madrid."


class OnlyModel:
    """A model seen through the protocol's members alone: anything else a caller asks for fails."""

    __slots__ = ("_m", "hp")

    def __init__(self, model: Model) -> None:
        self._m, self.hp = model, model.hp

    def forward(self, tokens, kv, all_logits=False):
        return self._m.forward(tokens, kv, all_logits)

    def new_cache(self, n_ctx):
        return self._m.new_cache(n_ctx)

    def summary(self):
        return self._m.summary()

    def close(self):
        self._m.close()


def test_the_protocol_is_small():
    declared = {n for n in vars(Model) if not n.startswith("_")} | set(Model.__annotations__)
    assert declared == set(MEMBERS)


def test_every_implementation_satisfies_it(smollm2_path, tmp_path):
    dense = load_model(GGUFFile(smollm2_path))
    comm = SimpleNamespace(rank=0, size=1)  # what the split models' constructors read of one
    moe = upcycle(smollm2_path, tmp_path / "moe4.gguf", n_expert=4)
    cache = ExpertCache(load_model(GGUFFile(moe)), 1 << 30)
    models = [
        dense,
        cache,
        PipelineModel(dense, comm, [(0, dense.hp.n_layer)]),
        TensorParallelModel(dense, comm, [1.0]),
        LockedModel(dense, threading.Lock()),
        OnlyModel(dense),
    ]
    try:
        for m in models:
            assert isinstance(m, Model), type(m).__name__
            assert isinstance(m.summary(), str)
    finally:
        cache.close()
    assert not isinstance(object(), Model)


def test_llama_needs_nothing_else(smollm2_path):
    llm = Llama(smollm2_path, n_ctx=64, verbose=False)
    want = llm.create_completion("The capital of France is", **GREEDY)["choices"][0]["text"]
    llm.reset()
    tokens = llm.tokenize(TEXT)
    bos = llm.tokenizer.bos_id if llm.tokenizer.add_bos else None
    ppl = perplexity(llm.model, tokens[:16], 16, 8, bos, progress=False).ppl
    llm.model = OnlyModel(llm.model)
    assert llm.create_completion("The capital of France is", **GREEDY)["choices"][0]["text"] == want
    streamed = llm.fork().create_completion("The capital of France is", stream=True, **GREEDY)
    assert "".join(c["choices"][0]["text"] for c in streamed) == want
    assert perplexity(llm.model, tokens[:16], 16, 8, bos, progress=False).ppl == ppl
    llm.close()


def test_a_model_outside_the_protocol_is_refused(smollm2_path):
    llm = Llama(smollm2_path, n_ctx=32, verbose=False)
    with pytest.raises(TypeError, match="does not implement"):
        llm.model = SimpleNamespace(forward=lambda *a: np.zeros(1))
