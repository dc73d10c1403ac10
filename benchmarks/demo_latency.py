"""Demo latency per image: prediction alone vs a full ``/predict`` request (prediction + Grad-CAM).

Runs the same functions the Gradio app calls, in-process (no HTTP), and prints p50/p95 in ms with
the ratio to prediction alone. Without ``--ckpt_path`` a classifier is built from ``--backbone``
(ImageNet conv base, untrained head: latency does not depend on the head's values).

    python benchmarks/demo_latency.py --backbone efficientnet_lite0 --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lightning_transfer import TransferClassifier, load_model
from lightning_transfer.commands.demo import DEFAULT_EXAMPLES, example_images, predict
from lightning_transfer.data import load_rgb
from lightning_transfer.interpret import gradcam_view


def percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=20, method="inclusive")
    return statistics.median(samples), cuts[18]


def timed(function: Callable[[], object], repeats: int) -> list[float]:
    function()  # warm-up: first call allocates and picks kernels
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", help="a trained checkpoint (default: build one from --backbone)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--image-size", type=int, help="default: the backbone's usual size")
    parser.add_argument("--images", default=str(DEFAULT_EXAMPLES), help="folder of images to send")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per image")
    args = parser.parse_args()

    if args.ckpt_path:
        model = load_model(args.ckpt_path)
    else:
        from lightning_transfer.backbones import get_spec

        size = args.image_size or get_spec(args.backbone).default_image_size
        model = TransferClassifier(backbone=args.backbone, weights=args.weights, image_size=size, pool="avg").eval()
    images = [load_rgb(path) for path in example_images(Path(args.images))]
    prediction, request = [], []
    for image in images:
        prediction += timed(lambda: predict(model, image), args.repeats)
        request += timed(lambda: gradcam_view(model, image), args.repeats)  # what on_predict runs

    print(f"{model.hparams.backbone} {model.image_size}px, {len(images)} images x {args.repeats} calls, "
          f"CPU threads {torch.get_num_threads()}")
    print(f"{'call':<36} {'p50 ms':>8} {'p95 ms':>8} {'ratio p50':>10}")
    base_p50, _ = percentiles(prediction)
    for name, samples in [("prediction (inference_mode)", prediction), ("/predict: prediction + Grad-CAM", request)]:
        p50, p95 = percentiles(samples)
        print(f"{name:<36} {p50:>8.1f} {p95:>8.1f} {p50 / base_p50:>9.2f}x")


if __name__ == "__main__":
    main()
