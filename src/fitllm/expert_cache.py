"""Expert streaming: a mixture-of-experts model bigger than memory, its experts read from disk.

The dense part (embeddings, attention, norms, routers) is used from the mmap as usual; the experts
live in a fixed number of slots (anonymous memory, the budget), one (layer, expert) per slot: its
gate, up and down rows, read on background threads with O_DIRECT (no copy in the page cache,
which under a memory cap would push out the dense part). The compiled MoE (layer.c) asks
for them through a callback once it has routed its tokens, then before each expert it runs; the
first call starts the reads of every chosen expert and, to overlap disk and compute, of the next
layer's likely experts (its router applied to this layer's input: the Mixtral-offloading guess).
The arithmetic is the same as with everything in memory, so are the tokens."""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from fitllm import kernels
from fitllm.kv_cache import KVCache
from fitllm.models.base import DecoderModel

log = logging.getLogger(__name__)
POLICIES = ("lfu", "lru")  # lru fails when a token uses more experts than fit (cyclic): 0 % hits
CHUNK = 8 << 20  # bytes per O_DIRECT read, several in flight over the reader threads
ALIGN = 4096  # O_DIRECT reads whole pages into page-aligned memory


def _open(path: str) -> tuple[int, bool]:
    """The file for reading experts: O_DIRECT where the file system allows it (else buffered)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT), True
    except (OSError, AttributeError):
        return os.open(path, os.O_RDONLY), False


class Reads:
    """The chunk reads that fill one slot."""

    def __init__(self, futures: list[Future]) -> None:
        self.futures = futures
        self.finished = False

    def done(self) -> bool:  # remembered: victim searches ask every slot, every layer
        self.finished = self.finished or all(f.done() for f in self.futures)
        return self.finished

    def result(self) -> None:
        for f in self.futures:
            f.result()


@dataclass
class Stats:
    hits: int = 0  # chosen experts found in a slot (or already being read)
    misses: int = 0
    guessed: int = 0  # chosen experts the previous layer's guess had named
    guesses: int = 0  # chosen experts in layers that had a guess
    bytes_read: int = 0
    wait_s: float = 0.0  # time the compute waited for reads
    tokens: list = field(default_factory=list)  # per forward call: (tokens, seconds, wait s, bytes)

    def hit_rate(self) -> float:
        return self.hits / max(1, self.hits + self.misses)

    def guess_rate(self) -> float:
        return self.guessed / max(1, self.guesses)


class ExpertCache:
    def __init__(
        self, model: DecoderModel, budget: int, policy: str = "lfu", prefetch: bool = True, readers: int = 4
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown cache policy {policy!r} ({', '.join(POLICIES)})")
        self.model, self.policy, self.prefetch = model, policy, prefetch
        self.hp = model.hp
        self.k = model.hp.n_expert_used
        self.layers = {i: b for i, b in enumerate(model.blk) if model.is_moe(b)}
        if not self.layers:
            raise ValueError("expert streaming needs a mixture-of-experts model")
        b = next(iter(self.layers.values()))
        self.parts = [b.ffn_gate_exps.expert_bytes, b.ffn_up_exps.expert_bytes, b.ffn_down_exps.expert_bytes]
        # a slot holds each part in its own page-aligned region, read whole pages at a time
        self.regions = [-(-n // ALIGN) * ALIGN + ALIGN for n in self.parts]
        self.slot_bytes = sum(self.regions) + ALIGN
        self.n_slots = budget // self.slot_bytes
        if self.n_slots < 1:
            raise MemoryError(
                f"an expert ({self.slot_bytes / 2**20:.0f} MiB) does not fit the {budget / 2**20:.0f} MiB"
                " left for experts: raise --memory-budget"
            )
        self.slots: list[np.ndarray] = []
        self.where: dict[tuple[int, int], int] = {}  # (layer, expert) -> slot
        self.ready: dict[tuple[int, int], Reads] = {}  # its reads
        self.uses: dict[tuple[int, int], int] = {}
        self.pinned: set[tuple[int, int]] = set()  # the expert being computed
        self.wanted: set[tuple[int, int]] = set()  # chosen in the current layer, not yet run
        self.guess: dict[int, set[int]] = {}
        self.last: dict[tuple[int, int], int] = {}  # (layer, expert) -> tick of its last use
        self.tick = 0  # MoE layers run so far
        self.stats = Stats()
        self.error: BaseException | None = None
        #: path -> (descriptor, O_DIRECT?, size) of each file holding tensors
        paths = dict.fromkeys(t.path for t in model.file.tensors.values() if t.path)  # shards, parts
        self.files = {p: (*_open(p), os.path.getsize(p)) for p in paths}
        self.ptr: dict[tuple[int, int], list[int]] = {}  # (layer, expert) -> its parts' addresses
        self.pool = ThreadPoolExecutor(readers, thread_name_prefix="fitllm-experts")
        self._lock = threading.Lock()
        self._cb = kernels.FETCH_FN(self._fetch)
        self._attach()

    def _attach(self) -> None:
        m = self.model
        # no readahead around a fault in the mapping: it would read the experts beside the dense
        # tensors into the page cache (8 MiB at a time here); the dense part is read once, up front
        m.file.advise(mmap.MADV_RANDOM)
        m.file.advise(mmap.MADV_WILLNEED, [t for n, t in m.file.tensors.items() if "_exps" not in n])
        specs = m.layer_specs()
        for i in self.layers:
            specs[i].fetch = ctypes.cast(self._cb, ctypes.c_void_p).value
            specs[i].layer_id = i

    # --- reading --------------------------------------------------------------------------------
    def _read_chunk(self, view: memoryview, path: str, off: int) -> None:
        fd, direct, size = self.files[path]
        got, n = 0, len(view)
        while got < n:
            r = os.preadv(fd, [view[got:]], off + got)
            if r <= 0 and off + got >= size:  # the page-rounded end is past the file's
                break
            if r <= 0:
                raise OSError(f"{path}: short read at byte {off + got}")
            got += r
        if not direct:
            os.posix_fadvise(fd, off, n, os.POSIX_FADV_DONTNEED)  # not held twice
        with self._lock:
            self.stats.bytes_read += got

    def _read(self, key: tuple[int, int], slot: int) -> Reads:
        """Start reading an expert into a slot: its gate, up and down rows, each as the whole pages
        around it (O_DIRECT: from the disk into the slot, no page cache), in chunks over the reader
        threads (a disk serves several reads in flight faster than one)."""
        layer, e = key
        blk, buf, futures, ptrs = self.layers[layer], self.slots[slot], [], []
        at = (-buf.ctypes.data) % ALIGN
        view = memoryview(buf)
        for ex, n, region in zip(
            (blk.ffn_gate_exps, blk.ffn_up_exps, blk.ffn_down_exps), self.parts, self.regions
        ):
            if not ex.weight.path:  # straddled two byte parts: in memory already
                buf[at : at + n] = ex.weight.data[e * n : (e + 1) * n]
                ptrs.append(buf.ctypes.data + at)
                at += region
                continue
            off = ex.weight.offset + e * n
            a0 = off - off % ALIGN
            size = -(-(off + n - a0) // ALIGN) * ALIGN
            for c in range(0, size, CHUNK):
                futures.append(
                    self.pool.submit(
                        self._read_chunk, view[at + c : at + min(size, c + CHUNK)], ex.weight.path, a0 + c
                    )
                )
            ptrs.append(buf.ctypes.data + at + off - a0)
            at += region
        self.ptr[key] = ptrs
        return Reads(futures)

    def _score(self, key: tuple[int, int]) -> int:
        """What the policy keeps: the higher, the longer (lru: last use, lfu: number of uses)."""
        return self.last.get(key, -1) if self.policy == "lru" else self.uses.get(key, 0)

    def _victim(self, key: tuple[int, int], need: bool) -> int | None:
        """A slot to reuse: a free one, else the policy's lowest among entries neither running, being
        read nor wanted by this layer (then, if this layer needs the slot, among the wanted ones). A
        guess (not need) only takes the place of an entry the policy values less: one not used
        since the last token (lru) or used less often than the guess would then be (lfu)."""
        if len(self.slots) < self.n_slots:
            self.slots.append(np.empty(self.slot_bytes, np.uint8))
            return len(self.slots) - 1
        idle = [k for k, f in self.ready.items() if k not in self.pinned and f.done()]
        for pool in ([k for k in idle if k not in self.wanted], idle if need else []):
            if pool:
                old = min(pool, key=self._score)
                if not need:
                    stale = (
                        self.tick - len(self.layers) if self.policy == "lru" else self.uses.get(key, 0) + 1
                    )
                    if self._score(old) >= stale:
                        return None
                del self.ready[old]
                return self.where.pop(old)
        return None

    def _start(self, key: tuple[int, int], need: bool = True) -> bool:
        """Begin reading an expert into a slot unless it is there already; False if no slot is free.
        need: for this layer (else a guess for the next, which may not evict this layer's)."""
        if key in self.where:
            return True
        slot = self._victim(key, need)
        if slot is None:
            return False
        self.where[key] = slot
        self.ready[key] = self._read(key, slot)
        return True

    # --- the callback from the compiled MoE -----------------------------------------------------
    def _fetch(self, ctx, layer: int, e: int, cnt, h, T: int, ptrs) -> int:
        try:
            if e < 0:
                self._plan(layer, cnt, h, T)
            else:
                self._give(layer, e, ptrs)
            return 0
        except BaseException as ex:  # noqa: BLE001 - reported by forward() after the layer fails
            self.error = ex
            return 1

    def _plan(self, layer: int, cnt, h, T: int) -> None:
        ne = self.model.hp.n_expert
        chosen = [e for e in range(ne) if cnt[e] > 0]
        self.pinned.clear()
        self.wanted = {(layer, e) for e in chosen}
        st = self.stats
        self.tick += 1
        for e in chosen:
            hit = (layer, e) in self.where
            st.hits, st.misses = st.hits + hit, st.misses + (not hit)
            self.uses[(layer, e)] = self.uses.get((layer, e), 0) + 1
            self.last[(layer, e)] = self.tick
        if layer in self.guess:
            st.guessed += len(self.guess.pop(layer) & set(chosen))
            st.guesses += len(chosen)
        for e in chosen:  # in the order they will run
            self._start((layer, e))
        nxt = next((i for i in self.layers if i > layer), None)
        # guesses that are mostly wrong (random routers) only evict what might be used: stop them
        useful = st.guesses < 16 or st.guess_rate() >= 0.5
        if self.prefetch and useful and nxt is not None:
            x = np.ctypeslib.as_array(h, (T, self.model.hp.n_embd))
            logits = self.layers[nxt].ffn_gate_inp(x)  # (T, n_expert)
            guess = {int(g) for g in np.argsort(-logits, axis=-1, kind="stable")[:, : self.k].reshape(-1)}
            self.guess[nxt] = guess
            for g in sorted(guess):
                if not self._start((nxt, g), need=False):
                    break

    def _give(self, layer: int, e: int, ptrs) -> None:
        key = (layer, e)
        self.pinned = {key}
        self.wanted.discard(key)
        t0 = time.perf_counter()
        while not self._start(key):  # every slot busy being read: wait for one
            next(f for f in self.ready.values() if not f.done()).result()
        self.ready[key].result()
        self.stats.wait_s += time.perf_counter() - t0
        ptrs[3 * e], ptrs[3 * e + 1], ptrs[3 * e + 2] = self.ptr[key]

    def new_cache(self, n_ctx: int) -> KVCache:
        return self.model.new_cache(n_ctx)  # the same layers: only where the experts live differs

    # --- driving ----------------------------------------------------------------------------------
    def forward(self, tokens: np.ndarray, kv: KVCache, all_logits: bool = False) -> np.ndarray:
        """model.forward with the experts streamed, and the per-call numbers recorded."""
        st = self.stats
        w0, b0, t0 = st.wait_s, st.bytes_read, time.perf_counter()
        try:
            out = self.model.forward(tokens, kv, all_logits)
        except ValueError:
            if self.error is not None:
                err, self.error = self.error, None
                raise err from None
            raise
        st.tokens.append((int(np.size(tokens)), time.perf_counter() - t0, st.wait_s - w0, st.bytes_read - b0))
        return out

    def summary(self) -> str:
        st = self.stats
        n = sum(t[0] for t in st.tokens[1:]) or 1
        dec = [t for t in st.tokens if t[0] == 1]
        line = (
            f"expert cache: {self.n_slots} slots of {self.slot_bytes / 2**20:.1f} MiB ({self.policy}),"
            f" hit rate {st.hit_rate():.1%}, next-layer guess right {st.guess_rate():.1%},"
            f" {st.bytes_read / 2**30:.2f} GiB read"
        )
        if dec:
            s, w, b = (sum(t[i] for t in dec) / len(dec) for i in (1, 2, 3))
            line += (
                f"; per decoded token {s * 1e3:.0f} ms: computing {(s - w) * 1e3:.0f} ms, waiting on disk"
                f" {w * 1e3:.0f} ms, {b / 2**20:.0f} MiB read"
            )
        return line + f" ({n} tokens)"

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for fd, _, _ in self.files.values():
            os.close(fd)
