"""``lightning-transfer demo``: a trained checkpoint behind a Gradio page and API, shareable by link.

The model is loaded once and shared. Several requests run at once (``CONCURRENCY``): each
decodes its upload and draws its overlay in its own thread, so a bad file is answered at once
instead of after everyone queued before it, and the model work of all requests waiting at a
moment runs as one batch (``--max_batch_size``; ``utils.batching``), one batch at a time, because
Grad-CAM and activations attach hooks to the shared model that a concurrent pass would trip over.
Uploads arrive unprocessed (``preprocess=False``) so that a non-image or oversized file becomes a
message on the page instead of a Gradio traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import io
import ipaddress
import os
import re
import sys
from pathlib import Path

import torch
from PIL import Image

from lightning_transfer.callbacks import checkpoint_file
from lightning_transfer.data import is_image_file, load_rgb
from lightning_transfer.interpret import GradCamView, activation_view, image_batch, predict_and_gradcam
from lightning_transfer.model import TransferClassifier, load_model
from lightning_transfer.utils.batching import Batcher
from lightning_transfer.utils.errors import UserError
from lightning_transfer.utils.runtime import default_device

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported: no phoning home
try:
    import gradio as gr
except ImportError:
    raise UserError("the demo needs Gradio; run pip install 'lightning-transfer[demo]'") from None

CKPT_ENV = "LIGHTNING_TRANSFER_CKPT"
"""Checkpoint used when ``--ckpt_path`` is not given (e.g. set as a Hugging Face Space variable)."""
DEFAULT_EXAMPLES = Path(__file__).resolve().parents[2] / "demo" / "examples"
"""The repository's example photos; absent in a wheel install, then the page has no examples."""
MAX_FILE_SIZE = "10mb"
"""Default upload limit, enforced by Gradio before the file reaches the model."""
MAX_PIXELS = 50_000_000
"""Larger images are refused from their header: a small file can decode to gigabytes."""
MAX_SIDE = 1024
"""Uploads are shrunk to fit this square first: the model sees 150-224 px and the page shows about
500, while blending and sending a 40-megapixel overlay took seconds of everyone's turn."""
MAX_CHANNELS = 64
"""Activation channels shown per layer (EfficientNet-Lite0's ``top`` has 1280)."""
CONCURRENCY = 16
"""Requests handled at once (decoding, model, drawing); two full batches, so one can gather while
the other runs."""
QUEUE_SIZE = 32
"""Requests waiting beyond ``CONCURRENCY`` and this many are turned away with "queue full"."""
MAX_BATCH_SIZE = 8
"""Most requests whose prediction and Grad-CAM run as one batch."""
CONCURRENCY_ID = "model"
NO_ACTIVATIONS = "Activations of the chosen layer appear here after **Predict**."

Upload = dict | None
"""Gradio's raw image payload: ``{"path": ..., "orig_name": ...}`` or None when empty."""


def predict(model: TransferClassifier, image: Image.Image) -> dict[str, float]:
    """Class name -> probability for one RGB image, without autograd (inference mode)."""
    batch = image_batch(model.backbone, [image], model.image_size)
    with torch.inference_mode():
        probabilities = model(batch).softmax(dim=1)[0]
    return dict(zip(model.class_names, probabilities.tolist()))


def activation_gallery(
    model: TransferClassifier, image: Image.Image, layer: str, limit: int = MAX_CHANNELS
) -> tuple[list[tuple[Image.Image, str]], str]:
    """The first ``limit`` channels of one backbone layer as (image, caption) pairs, and a title."""
    with torch.inference_mode():
        view = activation_view(model, image, layer)
    channels = [(channel, f"channel {index}") for index, channel in enumerate(view.channels[:limit])]
    shown = f" (first {limit} shown)" if len(view.channels) > limit else ""
    return channels, f"Activations of {view.title}{shown}"


def page_error(message: str) -> gr.Error:
    """A message for the user, not a server fault: no traceback in the server log, and escaped
    because Gradio renders it as HTML and it may quote a file name the uploader chose."""
    return gr.Error(html.escape(message, quote=False), print_exception=False)


def read_upload(upload: Upload) -> Image.Image:
    """The uploaded file as RGB, or a ``gr.Error`` the page shows next to the input."""
    if not upload or not upload.get("path"):
        raise page_error("No image yet: upload a photo or pick an example, then press Predict.")
    path = str(upload["path"])
    try:
        return load_rgb(path, max_pixels=MAX_PIXELS, max_side=MAX_SIDE)
    except UserError as err:  # name the user's file, not Gradio's temporary copy
        name = upload.get("orig_name") or Path(path).name
        raise page_error(str(err).replace(repr(path), repr(name))) from None


def example_images(folder: str | Path | None) -> list[str]:
    if folder is None or not Path(folder).is_dir():
        return []
    return [str(path) for path in sorted(Path(folder).iterdir()) if is_image_file(path)]


def gradcam_batcher(model: TransferClassifier, max_batch_size: int) -> Batcher:
    """Normalized image tensors -> (probabilities, predicted class, Grad-CAM) each, computed in batches."""

    def run(images: list[torch.Tensor]) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
        batch = torch.stack(images).to(next(model.parameters()).device)
        probabilities, targets, cams = predict_and_gradcam(model, batch)
        return list(zip(probabilities, targets.tolist(), cams))

    return Batcher(run, max_batch_size)


def build_demo(
    model: TransferClassifier | str | Path,
    examples: str | Path | None = DEFAULT_EXAMPLES,
    max_batch_size: int = MAX_BATCH_SIZE,
) -> gr.Blocks:
    """The Gradio app for a classifier or a checkpoint path, queued, not yet launched.

    Endpoints: ``/predict`` (image -> label probabilities, Grad-CAM overlay) and ``/activations``
    (image, layer name -> channel gallery, title with the layer's shape). The model runs for up to
    ``max_batch_size`` waiting requests together.
    """
    if not isinstance(model, TransferClassifier):
        model = load_model(model).to(default_device())
    model.eval()
    layers = list(model.backbone.layers())
    classes = ", ".join(model.class_names)
    explain = gradcam_batcher(model, max_batch_size)
    transform = model.preprocessing.transform(model.image_size)

    def on_predict(upload: Upload) -> tuple[dict[str, float], Image.Image]:
        image = read_upload(upload)
        probabilities, target, cam = explain(transform(image))
        view = GradCamView.render(image, model.class_names, probabilities, target, cam)
        return view.probabilities, view.overlay

    def on_activations(upload: Upload, layer: str) -> tuple[list[tuple[Image.Image, str]], str]:
        if not upload:  # the layer changed before any image was given: nothing to show yet
            return [], NO_ACTIVATIONS
        image = read_upload(upload)
        try:
            with explain.exclusive():  # its hooks must not meet a batch's
                return activation_gallery(model, image, layer)
        except UserError as err:  # e.g. an API caller's unknown layer name
            raise page_error(str(err)) from None

    with gr.Blocks(title=f"lightning-transfer: {classes}", analytics_enabled=False) as demo:
        gr.Markdown(
            f"## Classifier: {classes}\n"
            f"`{model.hparams.backbone}` at {model.image_size} px. Upload a photo (or pick an "
            "example) and press **Predict**: the probabilities, a Grad-CAM heatmap of where the "
            "evidence for the predicted class lies, and the chosen layer's activations."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    label="Image", type="filepath", image_mode=None, sources=["upload", "clipboard"]
                )
                button = gr.Button("Predict", variant="primary")
                if example_images(examples):
                    gr.Examples(example_images(examples), inputs=image, cache_examples=False)
            with gr.Column():
                label = gr.Label(label="Prediction", num_top_classes=min(5, len(model.class_names)))
                cam = gr.Image(label="Grad-CAM (predicted class)", type="pil", interactive=False)
        layer = gr.Dropdown(layers, value=layers[0], label="Backbone layer")
        title = gr.Markdown(NO_ACTIVATIONS)
        gallery = gr.Gallery(label="Activations", columns=8, height="auto", object_fit="contain")

        shared = {"preprocess": False, "concurrency_id": CONCURRENCY_ID}
        button.click(on_predict, image, [label, cam], api_name="predict", **shared).success(
            on_activations, [image, layer], [gallery, title], api_name="activations", **shared
        )
        layer.change(
            on_activations, [image, layer], [gallery, title], api_visibility="undocumented", **shared
        )
    return demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)


def parse_auth(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise UserError(f"--auth {text!r} is not USER:PASSWORD; pass e.g. --auth alice:s3cret")
    return user, password


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def share_failure(gradio_output: str) -> str:
    """Gradio's multi-line "Could not create share link" message, cut to its reason."""
    marker = "Could not create share link."
    for line in gradio_output.splitlines():
        if marker in line:
            return line.split(marker, 1)[1].strip().rstrip(".") or "unknown reason"
    return "unknown reason"


def serve(
    demo: gr.Blocks,
    host: str,
    port: int | None,
    share: bool,
    auth: tuple[str, str] | None,
    max_file_size: str,
) -> None:
    """Launch and block until Ctrl+C; a failed share link leaves the local server running.

    Gradio's own launch output (a many-line story when the share link fails) is captured and cut
    down to one line.
    """
    gradio_output = io.StringIO()
    try:
        with contextlib.redirect_stdout(gradio_output), contextlib.redirect_stderr(gradio_output):
            demo.launch(
                server_name=host, server_port=port, share=share, auth=auth,
                max_file_size=max_file_size, quiet=True, prevent_thread_lock=True,
            )
    except OSError as err:  # e.g. the port is taken; Gradio's advice after the first sentence is for coders
        reason = str(err).split(". ")[0]
        raise UserError(
            f"cannot serve on {host}:{port or '7860+'} ({reason}); pass another --port or --host"
        ) from None
    print(f"demo running at {demo.local_url} (Ctrl+C stops it)", flush=True)
    if share and demo.share_url:
        print(f"public link: {demo.share_url} (temporary; it stops with this process)", flush=True)
    elif share:
        print(
            f"warning: no public link ({share_failure(gradio_output.getvalue())}; creating one needs "
            f"internet access to Gradio's share servers); serving locally only at {demo.local_url}",
            file=sys.stderr, flush=True,
        )
    demo.block_thread()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-transfer demo",
        description="Serve a trained checkpoint as a Gradio web app: prediction, Grad-CAM, activations.",
    )
    parser.add_argument(
        "--ckpt_path", default=os.environ.get(CKPT_ENV),
        help=f"checkpoint written by `lightning-transfer fit` (default: ${CKPT_ENV})",
    )
    parser.add_argument(
        "--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to listen on; 0.0.0.0 serves the network (default: $GRADIO_SERVER_NAME or 127.0.0.1)",
    )
    parser.add_argument(
        "--port", type=int, default=None,
        help="port (default: $GRADIO_SERVER_PORT, or the first free port from 7860)",
    )
    parser.add_argument("--share", action="store_true", help="also ask Gradio for a temporary public link")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="require this login")
    parser.add_argument(
        "--examples", metavar="DIR",
        help="folder of example images shown under the input (default: the repository's demo/examples)",
    )
    parser.add_argument(
        "--max_file_size", default=MAX_FILE_SIZE,
        help=f"upload limit, e.g. 5mb or 500kb (default: {MAX_FILE_SIZE})",
    )
    parser.add_argument(
        "--max_batch_size", type=int, default=MAX_BATCH_SIZE,
        help=f"most waiting requests the model runs as one batch; 1 runs them one by one (default: {MAX_BATCH_SIZE})",
    )
    return parser


def main(argv: list[str]) -> None:
    """``lightning-transfer demo``: check the options, load the checkpoint, then serve."""
    args = build_parser().parse_args(argv)
    if not args.ckpt_path:
        raise UserError(f"no checkpoint given; pass --ckpt_path FILE.ckpt (or set ${CKPT_ENV})")
    args.ckpt_path = checkpoint_file(args.ckpt_path)
    auth = parse_auth(args.auth) if args.auth is not None else None
    if not re.fullmatch(r"\d+\s*[kmgt]?b", args.max_file_size, re.IGNORECASE):
        raise UserError(f"--max_file_size {args.max_file_size!r} is not a size like 10mb or 500kb")
    if args.examples is not None and not Path(args.examples).is_dir():
        raise UserError(f"--examples {args.examples!r} is not a folder; pass a folder of images")
    if args.max_batch_size < 1:
        raise UserError(f"--max_batch_size {args.max_batch_size}: use 1 or more")
    demo = build_demo(args.ckpt_path, args.examples or DEFAULT_EXAMPLES, args.max_batch_size)
    if auth is None and (args.share or not is_loopback(args.host)):
        who = "anyone with the public link" if args.share else f"anyone on the network (--host {args.host})"
        print(
            f"warning: no --auth, so {who} can use this demo; pass --auth USER:PASSWORD to require a login",
            file=sys.stderr, flush=True,
        )
    serve(demo, args.host, args.port, args.share, auth, args.max_file_size)
