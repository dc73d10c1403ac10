"""Demo under load: concurrent ``gradio_client`` users against ``lightning-transfer demo``, baseline vs this checkout.

Serves one checkpoint on 127.0.0.1 with each demo to compare, each in its own process, and sends
each the same mix from ``--users`` concurrent users making ``--requests`` requests each, one after
another: good photos, a text file, a 0-byte file and a 40-megapixel photo (7:1:1:1). Prints per
demo: requests answered (a prediction, or the app's message for a bad file) and dropped (queue
full, connection error, timeout), p50 / p95 latency (upload to answer), requests per second, the
ratios to the baseline of the same round, and whether the server still answers a normal request
afterwards. The demos take turns, ``--rounds`` times, so a shared machine's load falls on all alike.

The baseline is the demo of git commit ``--baseline-ref`` (default: the one that ran requests one
at a time), exported with ``git archive``; each ``--variant NAME=OPTIONS`` is this checkout's demo
with extra options (default: one variant, ``this checkout``, with none).

    python benchmarks/demo_load.py --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt
    python benchmarks/demo_load.py --ckpt_path model.ckpt --variant "batch 1=--max_batch_size 1" --variant "batch 8="
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "datasets" / "cats_vs_dogs_small" / "test"
BASELINE_REF = "937b6d5"
"""main before the demo batched its requests: one request at a time, full-size overlays."""
MIX = ["good"] * 7 + ["text", "empty", "big"]
BIG_SIZE = (8000, 5000)


@dataclass(frozen=True)
class Result:
    kind: str
    seconds: float
    outcome: str
    """``prediction``, ``message`` (the app's error for a bad file) or ``dropped: <why>``."""


@dataclass
class Server:
    name: str
    code: Path
    """Folder whose ``lightning_transfer`` package runs this demo."""
    options: list[str]
    url: str = ""
    process: subprocess.Popen | None = None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_inputs(images: Path, folder: Path) -> dict[str, list[Path]]:
    """Good photos from ``images`` and the bad and big files, written to ``folder``."""
    from PIL import Image

    every = sorted(images.rglob("*.jpg"))
    photos = every[:: max(1, len(every) // 16)]  # about 16, spread over the class folders
    if not photos:
        sys.exit(f"error: no .jpg photos under {images}; pass --images DIR")
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "empty.jpg").write_bytes(b"")
    with Image.open(photos[0]) as photo:
        photo.convert("RGB").resize(BIG_SIZE, Image.Resampling.BICUBIC).save(folder / "big.jpg", quality=85)
    return {"good": photos, "text": [folder / "notes.txt"], "empty": [folder / "empty.jpg"], "big": [folder / "big.jpg"]}


def start(server: Server, ckpt: str, log: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(server.code), "GRADIO_ANALYTICS_ENABLED": "False"}
    with log.open("w") as out:
        server.process = subprocess.Popen(
            [sys.executable, "-m", "lightning_transfer", "demo", "--ckpt_path", ckpt, "--host", "127.0.0.1",
             "--port", str(port), *server.options],
            cwd=server.code, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 300
    while "demo running at" not in log.read_text():
        if server.process.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"error: demo {server.name!r} did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.3)
    server.url = f"http://127.0.0.1:{port}/"


def ask(client, path: Path, timeout: float) -> str:  # noqa: ANN001 - gradio_client.Client
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    try:
        label, _ = client.submit(handle_file(path), api_name="/predict").result(timeout=timeout)
        return "prediction" if "confidences" in label else f"dropped: no prediction in {label}"
    except AppError:
        return "message"
    except Exception as err:  # queue full, connection refused, timeout: the user got no answer
        return f"dropped: {type(err).__name__}"


def load(url: str, inputs: dict[str, list[Path]], users: int, requests: int, timeout: float) -> list[Result]:
    """``users`` threads, each its own client sending ``requests`` requests one after another."""
    from gradio_client import Client

    results: list[Result] = []
    start_line = threading.Barrier(users)

    def user(index: int) -> None:
        client = Client(url, verbose=False, download_files=False)  # the overlay's URL is enough
        start_line.wait()
        for request in range(requests):
            kind = MIX[(index * requests + request) % len(MIX)]
            files = inputs[kind]
            began = time.perf_counter()
            outcome = ask(client, files[(index + request) % len(files)], timeout)
            results.append(Result(kind, time.perf_counter() - began, outcome))

    threads = [threading.Thread(target=user, args=(index,)) for index in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def still_answers(url: str, photo: Path) -> bool:
    from gradio_client import Client

    return ask(Client(url, verbose=False, download_files=False), photo, timeout=60) == "prediction"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20, method="inclusive")[18] if len(samples) > 1 else samples[0]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", help="checkpoint to serve (e.g. an EfficientNet-Lite0 `fit`'s last.ckpt)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of good .jpg photos to send")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--requests", type=int, default=5, help="requests per user, one after another")
    parser.add_argument("--rounds", type=int, default=2, help="turns each demo takes")
    parser.add_argument("--timeout", type=float, default=300, help="seconds after which a request counts as dropped")
    parser.add_argument("--baseline-ref", default=BASELINE_REF, help="git commit of the baseline demo")
    parser.add_argument("--variant", action="append", metavar="NAME=OPTIONS",
                        help="this checkout's demo with extra `demo` options; repeatable")
    args = parser.parse_args()
    if not args.ckpt_path or not Path(args.ckpt_path).is_file():
        parser.error(f"--ckpt_path {args.ckpt_path!r} is not a file; pass a checkpoint written by `fit`")
    return args


def export(ref: str, folder: Path) -> Path:
    """The package (and demo examples) of git commit ``ref``, extracted into ``folder``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "lightning_transfer", "demo"], capture_output=True)
    if archive.returncode != 0:
        sys.exit(f"error: cannot export --baseline-ref {ref}: {archive.stderr.decode().strip()}")
    folder.mkdir()
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def measure(servers: list[Server], inputs: dict[str, list[Path]], args: argparse.Namespace) -> None:
    """Each server takes its turn under the same load, ``args.rounds`` times; one line each."""
    total = args.users * args.requests
    print(f"{args.users} users x {args.requests} requests ({total}; good:text:0-byte:40-MP = 7:1:1:1), "
          f"CPU cores {os.cpu_count()}")
    print(f"{'round':>5}  {'demo':<24} {'answered':>8} {'dropped':>7} {'p50 s':>6} {'p95 s':>6} {'req/s':>6} "
          f"{'x req/s':>7} {'x p95':>6} {'CPU s: server':>13} {'clients':>7}  after")
    for round_index in range(args.rounds):
        base_rate = base_p95 = 0.0
        for server in servers:
            assert server.process is not None
            began, server_cpu, client_cpu = time.perf_counter(), cpu_seconds(server.process.pid), time.process_time()
            results = load(server.url, inputs, args.users, args.requests, args.timeout)
            wall = time.perf_counter() - began
            server_cpu, client_cpu = cpu_seconds(server.process.pid) - server_cpu, time.process_time() - client_cpu
            after = "answers" if still_answers(server.url, inputs["good"][0]) else "NO ANSWER"
            answered = [r for r in results if not r.outcome.startswith("dropped")]
            seconds = [r.seconds for r in answered] or [float("nan")]
            p50, slow, rate = statistics.median(seconds), p95(seconds), len(answered) / wall
            if server is servers[0]:
                base_rate, base_p95 = rate, slow
            print(f"{round_index + 1:>5}  {server.name:<24} {len(answered):>8} {total - len(answered):>7} "
                  f"{p50:>6.2f} {slow:>6.2f} {rate:>6.2f} {rate / base_rate:>7.2f} {slow / base_p95:>6.2f} "
                  f"{server_cpu:>13.1f} {client_cpu:>7.1f}  {after}", flush=True)
            by_kind = {kind: statistics.median(r.seconds for r in results if r.kind == kind) for kind in inputs}
            print(f"{'':>7}p50 s by kind: " + ", ".join(f"{kind} {s:.2f}" for kind, s in by_kind.items()))
            for reason in sorted({r.outcome for r in results} - {"prediction", "message"}):
                print(f"{'':>7}{sum(r.outcome == reason for r in results)} x {reason}")


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="demo_load_") as temp:
        temp_dir = Path(temp)
        servers = [Server(f"baseline {args.baseline_ref}", export(args.baseline_ref, temp_dir / "baseline"), [])]
        for variant in args.variant or ["this checkout="]:
            name, _, options = variant.partition("=")
            servers.append(Server(name, REPO, options.split()))
        inputs = make_inputs(args.images, temp_dir)
        try:
            for index, server in enumerate(servers):
                start(server, str(Path(args.ckpt_path).resolve()), temp_dir / f"server_{index}.log")
                still_answers(server.url, inputs["good"][0])  # warm-up: the first request sets up the model
            measure(servers, inputs, args)
        finally:
            for server in servers:
                if server.process is not None:
                    server.process.terminate()
                    server.process.wait(timeout=30)


if __name__ == "__main__":
    main()
