"""A Python API shaped like llama-cpp-python's `Llama`, so code written for it runs unchanged."""

from __future__ import annotations

import copy
import logging
import os
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

import numpy as np

from fitllm import kernels
from fitllm.generate import Sampler, SeqState, Stopping, evaluate, generate
from fitllm.gguf import GGUFFile
from fitllm.gguf.reader import ARRAY
from fitllm.models import DecoderModel, load_model
from fitllm.models.protocol import Model
from fitllm.sampling import SamplingParams, make_sampler
from fitllm.timings import Timings
from fitllm.tokenizer import GGUFTokenizer

log = logging.getLogger(__name__)
LLAMA_DEFAULT_SEED = 0xFFFFFFFF


def _budget(budget: int | str | None) -> tuple[int, bool]:
    """Bytes this process may use, and whether they are the caller's: as given (bytes or "16G")
    unless more than the machine's or its cgroup's (the kernel would kill it), else those."""
    from fitllm.plan import machine_memory, parse_size

    machine = machine_memory()
    given = parse_size(budget) if isinstance(budget, str) else budget
    return (given, True) if given and given <= machine else (machine, False)


class Llama:
    def __init__(
        self,
        model_path: str,
        *,
        n_ctx: int = 512,
        n_batch: int = 512,
        n_threads: int | None = None,
        seed: int = LLAMA_DEFAULT_SEED,
        logits_all: bool = False,
        verbose: bool = True,
        mmap_stream: bool = False,
        split_mode: int | str = "layer",
        tensor_split: list[float] | None = None,
        memory_budget: int | str | None = None,
        expert_cache: str = "lfu",
        prefetch_experts: bool = True,
        **_ignored: Any,
    ) -> None:
        """mmap_stream: run a model bigger than this machine's memory from the page cache (slow);
        without it such a model is refused up front (MemoryError) instead of being OOM-killed.
        A mixture-of-experts model bigger than memory_budget (bytes or "16G"; default: the
        machine's or its cgroup's memory) runs with its experts streamed from disk through a cache
        ("lfu" or "lru") that fills the rest of the budget (expert_cache.py), when its dense part fits.

        Under `mpirun -n N` the model is split over the N ranks: split_mode "layer" (1, pipeline)
        or "tensor" (2, llama.cpp's "row"), tensor_split the ranks' shares (default: in
        proportion to each host's memory). Rank 0 is the Llama to use; on the other ranks the
        constructor serves rank 0 until it closes, then exits the process (SystemExit(0))."""
        t0 = time.perf_counter()
        self.model_path = os.fspath(model_path)
        if n_threads:
            kernels.set_threads(n_threads)
        self._file = GGUFFile(self.model_path)
        self._n_ctx = n_ctx if n_ctx > 0 else self._file.get(f"{self._file.architecture}.context_length")
        from fitllm.distributed import under_mpirun

        split = under_mpirun()
        if split:
            self._model: Model = self._load_split(split_mode, tensor_split, mmap_stream)
        else:
            self._model = load_model(self._file)
        budget, given = (None, False) if split or mmap_stream else _budget(memory_budget)
        # a model that fits twice over is repacked beside the tokenizer's load
        repacked = self._repack() if budget and self._model_bytes() * 2 < budget else None
        self._tok = GGUFTokenizer(self._file)
        self.n_batch = max(1, min(n_batch, self._n_ctx))
        scores = np.zeros((self._n_ctx if logits_all else 1, self._model.hp.n_vocab), np.float32)
        if budget:  # after what it holds besides the weights
            self._model = self._fit(budget, expert_cache, prefetch_experts, given)
            if repacked is None and isinstance(self._model, DecoderModel):
                repacked = self._repack(len(os.sched_getaffinity(0)))
        if repacked:
            repacked()
        self._seq = SeqState(self._model.new_cache(self._n_ctx), scores, logits_all)
        self.logits_all = logits_all
        self._seed, self._rng_ = None if seed == LLAMA_DEFAULT_SEED else seed, None
        self._chat_template = None
        self._max_piece_bytes: int | None = None
        # what llama.cpp's perf counters say: load, prompt and token evaluation, sampling
        self.perf = Timings(load_ms=1000.0 * (time.perf_counter() - t0))
        if verbose:
            log.info(
                "loaded %s (%s, %d layers)", self.model_path, self._file.architecture, self._model.hp.n_layer
            )

    def _model_bytes(self) -> int:
        from fitllm.plan import resident_bytes

        return sum(t.nbytes for t in self._file.tensors.values()) + resident_bytes()

    def _repack(self, threads: int = 1):
        """The whole model in memory: its matrices in this CPU's fastest layout (FITLLM_REPACK=0: as
        in the file); what to call to wait for the copy, or None. One thread beside the tokenizer."""
        from fitllm.models.repack import repack

        return repack(self._model, threads) if os.environ.get("FITLLM_REPACK") != "0" else None

    def _fit(self, budget: int, policy: str, prefetch: bool, given: bool = False):
        """The model as it fits the budget (given: by the caller, else the machine's): whole, or its
        experts streamed; else MemoryError."""
        from fitllm.plan import check_fits, human_size, kv_bytes, resident_bytes, shape_of_gguf, work_bytes

        shape, hp = shape_of_gguf(self._file), self._model.hp
        # besides the weights: the KV cache, what the process holds now, and its work buffers
        other = kv_bytes(shape, self._n_ctx, shape.n_layer) + resident_bytes() + work_bytes(hp, self.n_batch)
        left = budget - other - (shape.weight_bytes - shape.expert_bytes)
        if shape.weight_bytes + other <= budget:
            return self._model
        if not shape.expert_bytes or left <= 0:
            check_fits(shape, self._n_ctx, budget, given)  # raises, with the numbers
            if not shape.expert_bytes:
                return self._model  # within the planning overhead
        log.info("%s does not fit %s: streaming its experts", self.model_path, human_size(budget))
        from fitllm.expert_cache import ExpertCache

        return ExpertCache(self._model, left, policy, prefetch)

    def _load_split(self, split_mode: int | str, tensor_split: list[float] | None, mmap_stream: bool):
        import atexit

        from fitllm.distributed import load_split, parse_split_mode

        model = load_split(self._file, self._n_ctx, parse_split_mode(split_mode), tensor_split, mmap_stream)
        if model.comm.rank != 0:
            model.serve()
            raise SystemExit(0)
        atexit.register(model.close)
        return model

    @property
    def model(self) -> Model:
        """What evaluates tokens: the loaded model, or a wrapper of it (experts streamed, split over
        ranks); shared with this Llama's forks."""
        return self._model

    @model.setter
    def model(self, model: Model) -> None:
        """Put a wrapper of the model in its place (a server's turn-taking); forks made after share it."""
        if not isinstance(model, Model):
            raise TypeError(f"{type(model).__name__} does not implement fitllm.models.protocol.Model")
        self._model = model

    @property
    def tokenizer(self) -> GGUFTokenizer:
        return self._tok

    def close(self) -> None:
        """Release the model; under mpirun, let the other ranks finish."""
        summary = self._model.summary()
        if summary:
            log.info("%s", summary)
        self._model.close()

    # --- vocabulary -------------------------------------------------------------------------
    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return self._tok.encode(text.decode("utf-8", "replace"), add_bos=add_bos, special=special)

    def detokenize(
        self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None, special: bool = False
    ) -> bytes:
        out = self._tok.decode(tokens, special)
        # as llama-cpp-python: drop the space SentencePiece put after a leading BOS
        if tokens and tokens[0] == self._tok.bos_id and out[:1] == b" ":
            out = out[1:]
        return out

    def n_ctx(self) -> int:
        return self._n_ctx

    def n_vocab(self) -> int:
        return self._model.hp.n_vocab

    def token_bos(self) -> int:
        return -1 if self._tok.bos_id is None else self._tok.bos_id

    def token_eos(self) -> int:
        return -1 if self._tok.eos_id is None else self._tok.eos_id

    @property
    def metadata(self) -> dict[str, str]:
        """The scalar and string keys, as strings (llama-cpp-python leaves the arrays out too)."""
        f = self._file
        return {k: str(v) for k, v in f.metadata.items() if f.value_types[k][0] != ARRAY}

    # --- low level ----------------------------------------------------------------------------
    @property
    def input_ids(self) -> list[int]:
        """The tokens evaluated into the context."""
        return self._seq.tokens

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def scores(self) -> np.ndarray:
        """Logits rows: one per evaluated token with logits_all=True, else the last one."""
        return self._seq.scores

    @property
    def _last_logits(self) -> np.ndarray | None:
        return self._seq.logits

    def reset(self) -> None:
        self._seq.truncate(0)
        self._seq.logits = None

    def eval(self, tokens: Sequence[int]) -> None:
        tokens = list(tokens)
        if not tokens:  # nothing to do, as llama-cpp-python's eval; prompts never get here empty
            return
        self._check_ids(tokens)
        evaluate(self._model, self._seq, tokens, self.n_batch)

    def _check_ids(self, tokens: list[int]) -> None:
        """ValueError for an id the vocabulary has not: the kernels would wrap it round (or
        overflow) into another token rather than fail."""
        n = self._model.hp.n_vocab
        if tokens and not 0 <= min(tokens) <= max(tokens) < n:
            bad = next(t for t in tokens if not 0 <= t < n)
            raise ValueError(f"token id {bad} out of range [0, {n})")

    def _eval_prompt(self, tokens: list[int]) -> None:
        """Evaluate a prompt, reusing the cached prefix it shares with what was evaluated before."""
        if not tokens:  # else the cut below keeps the previous request's tokens and logits
            raise ValueError("the prompt has no tokens")
        common = 0
        for a, b in zip(self.input_ids, tokens):
            if a != b:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # re-evaluate at least one token for its logits
        self._seq.truncate(common)
        t = time.perf_counter()
        self.eval(tokens[common:])
        self.perf.prompt(t, len(tokens) - common)

    # --- completions --------------------------------------------------------------------------
    def create_completion(
        self,
        prompt: str | list[int],
        suffix: str | None = None,
        max_tokens: int | None = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        echo: bool = False,
        stop: str | list[str] | None = None,
        stream: bool = False,
        seed: int | None = None,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        logprobs: int | None = None,
        model: str | None = None,
        stopping_criteria: Callable[[np.ndarray, np.ndarray], bool] | None = None,
        **_ignored: Any,
    ) -> dict | Iterator[dict]:
        """llama-cpp-python's create_completion; model: the name the result gives (default: the
        model's path); stopping_criteria(input_ids, logits) -> True ends generation before the
        next token (finish_reason "stop"), as llama-cpp-python's."""
        from fitllm.completion import completion_chunks, completion_result

        prompt_tokens = self._prompt_tokens(prompt)
        if len(prompt_tokens) >= self._n_ctx:
            raise ValueError(
                f"Requested tokens ({len(prompt_tokens)}) exceed context window of {self._n_ctx}"
            )
        params = SamplingParams(temperature, top_k, top_p, min_p, repeat_penalty)
        rng = np.random.default_rng(seed) if seed is not None else self._rng
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if max_tokens is None or max_tokens <= 0:
            max_tokens = self._n_ctx - len(prompt_tokens)
        meta = dict(id=f"cmpl-{uuid.uuid4()}", created=int(time.time()), model=model or self.model_path)
        sample = make_sampler(params, rng)
        tokens = self._generate(prompt_tokens, sample, max_tokens, stopping_criteria)
        echo_text = self.detokenize(prompt_tokens).decode("utf-8", "replace") if echo else ""
        if stream:
            return completion_chunks(self.tokenizer, tokens, stops, echo_text, meta)
        return completion_result(self.tokenizer, tokens, stops, echo_text, meta, len(prompt_tokens))

    __call__ = create_completion

    def _prompt_tokens(self, prompt: str | list[int]) -> list[int]:
        """The prompt's tokens; an empty prompt is [BOS], as llama.cpp and llama-cpp-python start it."""
        if isinstance(prompt, str):
            tokens = self._tokenize_prompt(prompt, add_bos=True)
        else:
            tokens = list(prompt)
            self._check_ids(tokens)
        if tokens:
            return tokens
        if self._tok.bos_id is None:
            raise ValueError("the prompt is empty and the model has no BOS token to start from")
        return [self._tok.bos_id]

    def _tokenize_prompt(self, text: str, add_bos: bool) -> list[int]:
        """A prompt's tokens; one whose bytes could not fit the context even in the vocabulary's
        longest pieces is refused untokenized (tokenizing megabytes takes seconds)."""
        data = text.encode()
        if self._max_piece_bytes is None:
            self._max_piece_bytes = max(len(t.encode()) for t in self._tok.tokens) or 1
        least = -(-len(data) // self._max_piece_bytes)
        if least >= self._n_ctx:
            raise ValueError(f"Requested tokens (at least {least}) exceed context window of {self._n_ctx}")
        return self.tokenize(data, add_bos=add_bos, special=True)

    @property
    def chat_template(self):
        """The model's chat template (ChatML when the file has none), in jinja2's sandbox."""
        if self._chat_template is None:
            from fitllm.chat import ChatTemplate

            tok = self._tok
            text = lambda i: tok.tokens[i] if i is not None else ""  # noqa: E731
            source = self._file.get("tokenizer.chat_template", None)
            self._chat_template = ChatTemplate(source, text(tok.bos_id), text(tok.eos_id))
        return self._chat_template

    def create_chat_completion(
        self, messages: list[dict[str, Any]], max_tokens: int | None = None, stream: bool = False, **kw: Any
    ) -> dict | Iterator[dict]:
        """llama-cpp-python's create_chat_completion: the messages rendered with the model's chat
        template, completed; a chat.completion, or chat.completion.chunk objects when streaming."""
        from fitllm.chat import chat_chunks, chat_result

        t = self.chat_template
        prompt = t.render(messages, add_generation_prompt=True)
        # a template that writes the BOS text itself gets no second one
        bos_in_text = bool(t.bos_token) and prompt.startswith(t.bos_token)
        tokens = self._tokenize_prompt(prompt, add_bos=not bos_in_text)
        out = self.create_completion(tokens, max_tokens=max_tokens, stream=stream, **kw)
        return chat_chunks(out, kw.get("model") or self.model_path) if stream else chat_result(out)

    @property
    def _rng(self) -> np.random.Generator:
        if self._rng_ is None:  # made when first sampled from: importing numpy.random is slow
            self._rng_ = np.random.default_rng(self._seed)
        return self._rng_

    def fork(self) -> Llama:
        """Another Llama on the same weights and tokenizer, with its own context (KV cache, tokens,
        sampler): a server slot. Their evaluations must not overlap (the kernels share buffers)."""
        other = copy.copy(self)
        other._seq = SeqState(self._model.new_cache(self._n_ctx), np.zeros_like(self.scores), self.logits_all)
        other._seed, other._rng_ = None, None
        other.perf = Timings(load_ms=self.perf.load_ms)
        return other

    def _generate(
        self, prompt_tokens: list[int], sample: Sampler, max_tokens: int, stopping: Stopping | None = None
    ) -> Generator[int, None, str]:
        """The prompt evaluated (when first asked for a token), then generate's tokens; returns
        their finish reason."""
        self._eval_prompt(prompt_tokens)
        return (
            yield from generate(
                self._model, self._seq, sample, max_tokens, self._n_ctx, self._tok.is_eog, stopping, self.perf
            )
        )
