"""Load test of `fitllm serve`: N small requests, C at a time, against a server in its own process;
errors, requests/s and the server's RSS before and after.

    python benchmarks/serve_load.py [-m MODEL] [-n 1000] [-c 8] [--parallel 2]"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx


def rss(pid: int) -> int:
    return int(next(x for x in open(f"/proc/{pid}/status") if x.startswith("VmRSS")).split()[1]) * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model")
    ap.add_argument("-n", "--requests", type=int, default=1000)
    ap.add_argument("-c", "--concurrency", type=int, default=8)
    ap.add_argument("--parallel", type=int, default=2)
    a = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "fitllm",
        "serve",
        "--port",
        str(port),
        "--parallel",
        str(a.parallel),
        "-c",
        "512",
    ]
    server = subprocess.Popen(cmd + (["-m", a.model] if a.model else []), stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                httpx.get(url + "/health")
                break
            except httpx.TransportError:
                time.sleep(0.2)
        http = httpx.Client(timeout=120)

        def one(i: int) -> int:
            body = {"prompt": f"Count: {i % 50}", "max_tokens": 1, "temperature": 0}
            try:
                return http.post(url + "/v1/completions", json=body).status_code
            except httpx.HTTPError:
                return -1

        with ThreadPoolExecutor(a.concurrency) as ex:
            list(ex.map(one, range(100)))  # warm-up
            before, t0 = rss(server.pid), time.perf_counter()
            codes = list(ex.map(one, range(a.requests)))
            dt, after = time.perf_counter() - t0, rss(server.pid)
        errors = sum(c != 200 for c in codes)
        print(f"{a.requests} requests, {a.concurrency} at a time, {a.parallel} slots: {errors} errors,"
              f" {a.requests / dt:.1f} requests/s; server RSS {before / 2**20:.1f} MiB before,"
              f" {after / 2**20:.1f} MiB after")  # fmt: skip
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
