"""The Gradio demo: prediction in-process, the real server through gradio_client, a real browser.

The server tests share one ``lightning-transfer demo --share`` subprocess on a free local port.
Its share link is pointed at a closed local port, so the link fails online and offline alike and
the tests see the server keep answering without one.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import httpx
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from conftest import REPO, TINY_SIZE, run_cli
from lightning_transfer import load_model
from lightning_transfer.commands.demo import (
    MAX_CHANNELS,
    MAX_SIDE,
    activation_gallery,
    build_demo,
    predict,
    read_upload,
    serve,
)
from lightning_transfer.commands.demo import main as demo_main
from lightning_transfer.data import ImageFolderDataModule, load_rgb
from lightning_transfer.interpret import predict_and_gradcam
from lightning_transfer.model import TransferClassifier
from lightning_transfer.utils.batching import Batcher
from lightning_transfer.utils.errors import UserError

EXAMPLES = sorted((REPO / "demo" / "examples").glob("*.jpg"))
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT_CKPT_ENV = "DEMO_SCREENSHOT_CKPT"
"""Serve this checkpoint instead of the tiny one (how the README screenshot was made)."""


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path) -> TransferClassifier:
    return load_model(tiny_checkpoint)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_examples_are_small_photos() -> None:
    assert len(EXAMPLES) >= 4
    for path in EXAMPLES:
        assert path.stat().st_size < 30_000, path
        assert max(Image.open(path).size) <= 256, path


def test_predict_preprocesses_like_training(model: TransferClassifier) -> None:
    """Probabilities per checkpoint class name, equal to the model on the data module's transform."""
    transform = ImageFolderDataModule(backbone="vgg16", image_size=TINY_SIZE).transform(train=False)
    for path in EXAMPLES:
        image = load_rgb(path)
        probabilities = predict(model, image)
        assert list(probabilities) == ["cat", "dog"]
        with torch.no_grad():
            expected = model(transform(image)[None]).softmax(dim=1)[0]
        assert torch.allclose(torch.tensor(list(probabilities.values())), expected, atol=1e-5)


def test_activation_gallery_shows_the_chosen_layer(model: TransferClassifier) -> None:
    image = load_rgb(EXAMPLES[0])
    channels, title = activation_gallery(model, image, "block1_conv1")
    assert len(channels) == 64 and title.startswith("Activations of block1_conv1")
    assert channels[0][0].size == (TINY_SIZE, TINY_SIZE) and channels[5][1] == "channel 5"
    deep, title = activation_gallery(model, image, "block5_conv3")  # 512 channels at 4x4
    assert len(deep) == MAX_CHANNELS and deep[0][0].size == (4, 4)
    assert f"first {MAX_CHANNELS} shown" in title


def test_read_upload_bad_and_odd_images(tmp_path: Path) -> None:
    with pytest.raises(gr.Error, match="No image yet"):
        read_upload(None)
    text = tmp_path / "upload_123" / "notes.txt"
    text.parent.mkdir()
    text.write_text("not an image")
    with pytest.raises(gr.Error, match="cannot read image 'my notes.txt'") as caught:
        read_upload({"path": str(text), "orig_name": "my notes.txt"})
    assert "upload_123" not in caught.value.message  # the user's file name, not the temp copy
    huge = tmp_path / "huge.png"
    Image.new("1", (8000, 8000)).save(huge)  # 64 MP that compress to a few KB
    with pytest.raises(gr.Error, match="8000x8000 pixels, more than the 50 megapixels allowed"):
        read_upload({"path": str(huge), "orig_name": "huge.png"})
    for mode in ("L", "RGBA", "P"):
        odd = tmp_path / f"{mode}.png"
        Image.open(EXAMPLES[0]).convert(mode).save(odd)
        image = read_upload({"path": str(odd), "orig_name": odd.name})
        assert image.mode == "RGB" and image.size == Image.open(EXAMPLES[0]).size


@pytest.mark.parametrize("suffix, size", [(".jpg", (4096, 2560)), (".png", (2048, 1280))])
def test_big_uploads_are_shrunk_to_fit_max_side_first(tmp_path: Path, suffix: str, size: tuple[int, int]) -> None:
    """A 40-megapixel photo took seconds to blend and send at full size (a JPEG decodes at 1/2 here)."""
    big = tmp_path / f"big{suffix}"
    Image.open(EXAMPLES[0]).convert("RGB").resize(size).save(big)
    image = read_upload({"path": str(big), "orig_name": big.name})
    assert image.size == (MAX_SIDE, MAX_SIDE * 5 // 8)
    small = Image.open(EXAMPLES[0])
    assert read_upload({"path": str(EXAMPLES[0]), "orig_name": "x.jpg"}).size == small.size  # small ones stay


def test_batcher_runs_waiting_requests_together_and_answers_each_its_own() -> None:
    batches: list[list[int]] = []
    started, release = threading.Event(), threading.Event()

    def run(items: list[int]) -> list[int]:
        batches.append(items)
        if len(batches) == 1:  # hold the first batch until the others are waiting
            started.set()
            release.wait(5)
        return [item * 10 for item in items]

    batcher = Batcher(run, max_batch_size=3)
    results: dict[int, int] = {}

    def request(item: int) -> None:
        results[item] = batcher(item)

    first = threading.Thread(target=request, args=(0,))
    first.start()
    started.wait(5)
    others = [threading.Thread(target=request, args=(item,)) for item in range(1, 6)]
    for thread in others:
        thread.start()
    while len(batcher._pending) < 5:  # all five queued behind the running batch
        time.sleep(0.001)
    release.set()
    for thread in [first, *others]:
        thread.join(5)
    assert results == {item: item * 10 for item in range(6)}
    assert [len(batch) for batch in batches] == [1, 3, 2]


def test_batcher_failure_reaches_every_request_of_the_batch_and_the_next_batch_runs() -> None:
    batcher = Batcher(lambda items: [1 / item for item in items], max_batch_size=4)
    with pytest.raises(ZeroDivisionError):
        batcher(0)
    assert batcher(4) == 0.25
    with batcher.exclusive():  # e.g. activations: no batch meanwhile
        assert not batcher._lock.acquire(blocking=False)


@pytest.mark.slow
def test_cli_error_is_one_line_before_serving(tmp_path: Path) -> None:
    result = run_cli("demo", "--ckpt_path", "missing.ckpt", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "error: checkpoint 'missing.ckpt' does not exist; pass --ckpt_path to a .ckpt file"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ckpt_path", "x.ckpt", "--auth", "alice"], "--auth 'alice' is not USER:PASSWORD"),
        (["--ckpt_path", "x.ckpt", "--auth", "alice:"], "--auth 'alice:' is not USER:PASSWORD"),
        ([], "no checkpoint given; pass --ckpt_path"),
        (["--ckpt_path", "x.ckpt", "--examples", "nope"], "--examples 'nope' is not a folder"),
        (["--ckpt_path", "x.ckpt", "--max_file_size", "10"], "--max_file_size '10' is not a size like 10mb"),
        (["--ckpt_path", "x.ckpt", "--max_batch_size", "0"], "--max_batch_size 0: use 1 or more"),
    ],
)
def test_bad_options_fail_before_loading(monkeypatch: pytest.MonkeyPatch, args: list[str], message: str) -> None:
    monkeypatch.delenv("LIGHTNING_TRANSFER_CKPT", raising=False)
    with pytest.raises(UserError, match=re.escape(message)):
        demo_main(args)


@pytest.mark.slow
def test_taken_port_is_one_user_error(tiny_checkpoint: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot serve on 127.0.0.1:{port} .*; pass another --port"):
            demo_main(["--ckpt_path", str(tiny_checkpoint), "--port", str(port)])


@pytest.mark.slow
def test_app_py_defaults_to_model_ckpt_next_to_it(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "LIGHTNING_TRANSFER_CKPT": ""}
    result = subprocess.run(
        [sys.executable, str(REPO / "demo" / "app.py")], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert result.stderr.strip() == (
        f"error: checkpoint {str(REPO / 'demo' / 'model.ckpt')!r} does not exist; "
        "pass --ckpt_path to a .ckpt file"
    )


@contextmanager
def serving(demo: gr.Blocks, auth: tuple[str, str] | None = None) -> Iterator[str]:
    """``demo`` served from this process on a free port (its URL), closed afterwards."""
    port = free_port()
    thread = threading.Thread(target=serve, args=(demo, "127.0.0.1", port, False, auth, "1mb"), daemon=True)
    thread.start()
    try:
        for _ in range(300):
            if demo.local_url:
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        thread.join(timeout=10)


@pytest.mark.slow
def test_auth_protects_the_app(model: TransferClassifier) -> None:
    with serving(build_demo(model, examples=None), auth=("alice", "s3cret")) as url:
        assert httpx.get(f"{url}config").status_code == 401
        with pytest.raises(ValueError, match="login"):
            Client(url, auth=("alice", "wrong"), verbose=False)
        client = Client(url, auth=("alice", "s3cret"), verbose=False)
        label, _ = client.predict(handle_file(EXAMPLES[0]), api_name="/predict")
        assert label["label"] in ("cat", "dog")


@pytest.mark.slow
def test_simultaneous_users_are_all_answered_with_shared_model_batches(
    model: TransferClassifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """7 photos and a text file from 8 users at once: 7 predictions, 1 message, the photos' model work
    in fewer, larger batches (each batch is slowed down so that the others queue behind it)."""
    batch_sizes: list[int] = []

    def slowed(model: TransferClassifier, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch_sizes.append(len(batch))
        time.sleep(0.3)
        return predict_and_gradcam(model, batch)

    monkeypatch.setattr("lightning_transfer.commands.demo.predict_and_gradcam", slowed)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    uploads = [EXAMPLES[index % len(EXAMPLES)] for index in range(7)] + [text]
    with serving(build_demo(model, examples=None)) as url:
        clients = [Client(url, verbose=False, download_files=False) for _ in uploads]
        jobs = [client.submit(handle_file(path), api_name="/predict") for client, path in zip(clients, uploads)]
        answers = []
        for job in jobs:
            try:
                answers.append(job.result(timeout=120)[0]["label"])
            except AppError as err:
                answers.append(str(err))
    assert all(answer in ("cat", "dog") for answer in answers[:7]), answers
    assert "cannot read image 'notes.txt'" in answers[7]
    assert sum(batch_sizes) == 7 and max(batch_sizes) > 1, batch_sizes


@dataclass(frozen=True)
class Server:
    url: str
    log: Path
    """The server's stdout and stderr."""
    class_names: list[str]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Server]:
    """``lightning-transfer demo --share`` in a subprocess; waits until it serves."""
    ckpt = os.environ.get(SCREENSHOT_CKPT_ENV) or str(request.getfixturevalue("tiny_checkpoint"))
    workdir = tmp_path_factory.mktemp("demo_server")
    log = workdir / "server.log"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_SHARE_SERVER_ADDRESS": "127.0.0.1:9"}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "lightning_transfer", "demo", "--ckpt_path", ckpt,
             "--host", "127.0.0.1", "--port", str(port), "--share"],
            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 300
        while "demo running at" not in log.read_text():
            assert process.poll() is None, f"demo exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"demo did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield Server(f"http://127.0.0.1:{port}/", log, load_model(ckpt).class_names)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_share_failure_and_open_access_are_one_line_each(server: Server) -> None:
    warnings = [line for line in server.log.read_text().splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, warnings
    assert warnings[0] == (
        "warning: no --auth, so anyone with the public link can use this demo; "
        "pass --auth USER:PASSWORD to require a login"
    )
    assert warnings[1].startswith("warning: no public link (")
    assert warnings[1].endswith(f"serving locally only at {server.url}")


def probabilities_of(label: dict) -> dict[str, float]:
    return {item["label"]: item["confidence"] for item in label["confidences"]}


@pytest.mark.slow
def test_client_predicts_and_survives_bad_input(server: Server, model: TransferClassifier, tmp_path: Path) -> None:
    client = Client(server.url, verbose=False)
    example = EXAMPLES[0]

    def check_good() -> None:
        label, overlay = client.predict(handle_file(example), api_name="/predict")
        probabilities = probabilities_of(label)
        assert sorted(probabilities) == sorted(server.class_names)
        assert label["label"] == max(probabilities, key=probabilities.get)
        assert sum(probabilities.values()) == pytest.approx(1, abs=1e-4)
        if not os.environ.get(SCREENSHOT_CKPT_ENV):  # the same numbers as in-process
            expected = predict(model, load_rgb(example))
            assert probabilities == pytest.approx(expected, abs=1e-4)
        assert Image.open(overlay).size == Image.open(example).size

    check_good()
    layer = server_layer(client)
    gallery, title = client.predict(handle_file(example), layer, api_name="/activations")
    assert title.startswith(f"Activations of {layer}: ")
    assert len(gallery) > 1 and all(Path(item["image"]).is_file() for item in gallery)

    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    huge = tmp_path / "huge.png"
    Image.new("1", (8000, 8000)).save(huge)
    for bad, message in [(None, "No image yet"), (text, "cannot read image 'notes.txt'"), (huge, "megapixels")]:
        with pytest.raises(AppError, match=message):
            client.predict(handle_file(bad) if bad else None, api_name="/predict")
    with pytest.raises(AppError, match="has no layer 'nope'"):
        client.predict(handle_file(example), "nope", api_name="/activations")
    too_big = httpx.post(  # the upload limit is the server's, not only the client's
        f"{server.url}gradio_api/upload", files={"files": ("big.jpg", b"\xff" * (10 * 2**20 + 1))}
    )
    assert too_big.status_code == 413
    for mode in ("L", "RGBA"):
        odd = tmp_path / f"{mode}.png"
        Image.open(example).convert(mode).save(odd)
        label, _ = client.predict(handle_file(odd), api_name="/predict")
        assert label["label"] in server.class_names
    check_good()


def server_layer(client: Client) -> str:
    """The layer dropdown's first choice, read from the API description."""
    info = client.view_api(print_info=False, return_format="dict")
    layer = info["named_endpoints"]["/activations"]["parameters"][1]
    return layer["parameter_default"]


@pytest.mark.slow
def test_browser_uploads_predicts_and_shows_everything(server: Server, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing; install Debian's chromium (bash .ci/run does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server.url)
            page.get_by_role("button", name="Predict").click()
            page.locator(".toast-body", has_text="No image yet").wait_for(timeout=30_000)
            page.reload()  # a fresh page, without the error toast
            page.locator("input[type=file]").first.set_input_files(EXAMPLES[0])
            page.get_by_role("button", name="Predict").click()
            label = page.locator("[data-testid=label-output-value]")
            label.wait_for(timeout=60_000)
            assert label.inner_text().strip() in server.class_names
            page.locator(".gallery-item img, button.thumbnail-item img").first.wait_for(timeout=60_000)
            page.get_by_text(re.compile(r"Activations of \S+: \d+ channels")).wait_for(timeout=60_000)
            page.wait_for_load_state("networkidle")
            screenshot = tmp_path / "demo.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert Image.open(screenshot).size[0] == 1280
