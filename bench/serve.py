"""Serving throughput: the Serve application over real HTTP on 127.0.0.1 (tiny models).

For each Base setting (batching: `max_batch_size` N; baseline: `max_batch_size` 1), one Base
replica and one Refiner replica are deployed, then requests are sent from 1, 8 and 16
client threads (one adapter), and from 16 threads alternating between two adapter versions.
Prints requests/s and p50/p99 latency per row, and the ratios against the baselines measured
in the same run: batching vs max_batch_size=1 at each concurrency, and alternating adapters
vs one adapter.

    python bench/serve.py                       # ~4 minutes on 2 CPU cores
    python bench/serve.py --requests 64 --steps 4 --batch 8 --refine
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_config(args: argparse.Namespace, registry: str, max_batch_size: int, port: int):
    from bluepri.config import ModelsConfig, ServeConfig, build_config

    return build_config(
        ServeConfig,
        {
            "models": ModelsConfig.tiny().model_dump(),
            "registry": registry,
            "adapter_name": "bench",
            "default_size": args.size,
            "default_steps": args.steps,
            "limits": {"min_side": 64, "max_side": max(args.size, 64), "max_steps": 50},
            "max_adapters_per_replica": 2,
            "api_keys_env": None,
            "port": port,  # Serve keeps the HTTP options of its first start
            "ingress": {"num_cpus": 0.1, "max_ongoing_requests": 64, "max_queued_requests": -1},
            "base": {
                "num_cpus": 0.5,
                "max_ongoing_requests": 32,
                "max_queued_requests": -1,
                "max_batch_size": max_batch_size,
                "batch_wait_timeout_s": args.batch_wait,
            },
            "refiner": {"num_cpus": 0.5, "max_ongoing_requests": 32, "max_batch_size": 8},
        },
    )


def post(url: str, body: dict) -> float:
    request = urllib.request.Request(
        f"{url}/v1/generate",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310 (loopback)
        response.read()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")
    return time.perf_counter() - started


def measure(url: str, args: argparse.Namespace, concurrency: int, adapters: list[str]) -> dict:
    count = max(args.requests, concurrency * 4) if concurrency > 1 else args.requests // 2

    def one(index: int) -> float:
        body = {
            "prompt": f"a blueprint drawing number {index}",
            "seed": index,
            "adapter": adapters[index % len(adapters)],
            "refine": args.refine,
        }
        return post(url, body)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # warm connections and adapters
        started = time.perf_counter()
        latencies = sorted(pool.map(one, range(count)))
        wall = time.perf_counter() - started
    return {
        "requests": count,
        "rps": count / wall,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=128, help="requests per row (c > 1)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16, help="max_batch_size when batching")
    parser.add_argument("--batch-wait", type=float, default=0.02, help="batch_wait_timeout_s")
    parser.add_argument("--refine", action="store_true", help="through the refiner as well")
    args = parser.parse_args()

    import ray
    from ray import serve

    from bluepri.models.tiny import save_random_adapter
    from bluepri.registry import AdapterRegistry
    from bluepri.runtime import ensure_ray
    from bluepri.serve import deploy

    ensure_ray(num_cpus=2)
    folder = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    registry = AdapterRegistry(folder / "registry")
    for seed in range(2):
        registry.put(save_random_adapter(folder / f"adapter-{seed}", seed), "bench")
    registry.promote("bench", "v0001", "bench")
    one, two = ["bench@v0001"], ["bench@v0001", "bench@v0002"]
    rows: dict[tuple[str, str], dict] = {}
    port = free_port()
    started = time.perf_counter()
    try:
        for label, batch in ((f"batch {args.batch}", args.batch), ("batch 1", 1)):
            config = serve_config(args, registry.uri, batch, port)
            url = deploy.start(config)
            for concurrency in (1, 8, 16):
                rows[label, f"c={concurrency}, one adapter"] = measure(url, args, concurrency, one)
            rows[label, "c=16, two adapters alternating"] = measure(url, args, 16, two)
            deploy.stop(config)
    finally:
        serve.shutdown()
        ray.shutdown()
    print(
        f"\ntiny SDXL, {args.size} px, {args.steps} steps, refine {args.refine}; one Base "
        f"replica (0.5 CPU), one Refiner replica (0.5 CPU); {time.perf_counter() - started:.0f} s"
    )
    print("\n| setting | load | requests | req/s | p50 s | p99 s |\n|---|---|---:|---:|---:|---:|")
    for (label, load), row in rows.items():
        print(
            f"| {label} | {load} | {row['requests']} | {row['rps']:.2f} | {row['p50']:.3f} "
            f"| {row['p99']:.3f} |"
        )
    batched = f"batch {args.batch}"
    print("\n| ratio | value |\n|---|---:|")
    for concurrency in (1, 8, 16):
        load = f"c={concurrency}, one adapter"
        ratio = rows[batched, load]["rps"] / rows["batch 1", load]["rps"]
        print(f"| req/s, {batched} vs batch 1, c={concurrency} | {ratio:.2f}x |")
    for label in (batched, "batch 1"):
        ratio = rows[label, "c=16, two adapters alternating"]["rps"]
        ratio /= rows[label, "c=16, one adapter"]["rps"]
        print(f"| req/s, two adapters alternating vs one, c=16, {label} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
