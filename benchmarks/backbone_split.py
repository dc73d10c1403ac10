"""Benchmark: what a backbone by name costs against the upstream model, side by side in one run.

For each backbone name (a torchvision model or ``timm/NAME``), two comparisons, alternated
``--repeats`` times so that a noisy machine slows both sides alike; medians and ratios printed:

1. building it: ``create_backbone(NAME, "none")`` (upstream model + torch.fx trace + named blocks)
   vs the upstream model alone (``spec.build_source()``): the start-up cost of the split;
2. the conv base's forward on one batch (inference mode, fp32): the ``Backbone`` (a Sequential of
   the upstream modules) vs the upstream's own way to the same feature map: timm's
   ``forward_features``, torchvision's ``create_feature_extractor`` up to the last block. The two
   outputs are checked to be equal first; both sides get warm-up calls, and which goes first alternates.

    python benchmarks/backbone_split.py
    python benchmarks/backbone_split.py --backbones resnet50 timm/convnext_atto --image-size 224 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

DEFAULT_BACKBONES = ["resnet18", "timm/resnet10t", "mobilenet_v3_small"]
WARMUP = 3
"""Forwards per side before measuring: oneDNN picks and caches its kernels on the first calls."""


def alternated(repeat: int) -> tuple[str, str]:
    """Which side goes first alternates: whatever the first call of a pair pays is paid by both."""
    return ("upstream", "by name") if repeat % 2 == 0 else ("by name", "upstream")


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def upstream_features(name: str, source):  # -> Callable[[Tensor], Tensor]
    """The upstream library's own way from images to the conv map our blocks end at."""
    from torchvision.models.feature_extraction import create_feature_extractor

    from lightning_transfer.backbones.generic import TIMM_PREFIX, TORCHVISION_HEAD, TORCHVISION_STAGE_LISTS
    from lightning_transfer.backbones.split import conv_base_paths

    if name.startswith(TIMM_PREFIX):
        return source.forward_features
    last = conv_base_paths(source, name, TORCHVISION_STAGE_LISTS, head_modules=TORCHVISION_HEAD)[-1]
    extractor = create_feature_extractor(source, {last: "features"})
    return lambda images: extractor(images)["features"]


def measure(name: str, image_size: int, batch_size: int, repeats: int) -> dict[str, float]:
    import torch

    from lightning_transfer.backbones import Backbone, create_backbone, get_spec

    spec = get_spec(name)
    builds = {"upstream": spec.build_source, "by name": lambda: create_backbone(name, "none")}
    build: dict[str, list[float]] = {"upstream": [], "by name": []}
    for repeat in range(repeats):
        for side in alternated(repeat):
            build[side].append(seconds(builds[side]))

    source = spec.build_source().eval()
    backbone = Backbone(spec, spec.to_blocks(source)).eval()  # the same modules, so the same weights
    baseline = upstream_features(name, source)
    images = torch.randn(batch_size, 3, image_size, image_size)
    runs = {"upstream": lambda: baseline(images), "by name": lambda: backbone(images)}
    forward: dict[str, list[float]] = {"upstream": [], "by name": []}
    with torch.inference_mode():
        if not torch.equal(backbone(images), baseline(images)):
            raise SystemExit(f"{name}: the blocks' feature map differs from the upstream one")
        for _ in range(WARMUP):
            runs["upstream"](), runs["by name"]()
        for repeat in range(repeats):
            for side in alternated(repeat):
                forward[side].append(seconds(runs[side]))
    medians = {f"build {side}": statistics.median(times) for side, times in build.items()}
    medians |= {f"forward {side}": statistics.median(times) for side, times in forward.items()}
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=DEFAULT_BACKBONES, help="backbone names")
    parser.add_argument("--image-size", type=int, default=224, help="square input size (default 224)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward (default 16)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating measurements per side (default 5)")
    args = parser.parse_args()

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size} "
          f"at {args.image_size} px, medians of {args.repeats}")
    print(f"{'backbone':<22}{'build upstream':>15}{'by name':>10}{'ratio':>7}"
          f"{'forward upstream':>18}{'by name':>10}{'ratio':>7}")
    for name in args.backbones:
        m = measure(name, args.image_size, args.batch_size, args.repeats)
        print(f"{name:<22}{m['build upstream']:>14.3f}s{m['build by name']:>9.3f}s"
              f"{m['build by name'] / m['build upstream']:>7.2f}{m['forward upstream']:>17.3f}s"
              f"{m['forward by name']:>9.3f}s{m['forward by name'] / m['forward upstream']:>7.2f}")


if __name__ == "__main__":
    main()
