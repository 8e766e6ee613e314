"""Commands of the crate family (crate-measure, crate-attention): argument parsing only; the work is in :mod:`tractable.experiments`."""
from __future__ import annotations

import argparse
import json


def _kwargs(text):
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--model-kwargs must be a JSON object, e.g. '{{\"patch_size\": 8}}': {e}")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--model-kwargs must be a JSON object, e.g. '{\"patch_size\": 8}'")
    return value


def _floats(text):
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _cmd_measure(args) -> int:
    from tractable.experiments.crate.commands import run_measure

    run_measure(args.source, args.data, model=args.model, model_kwargs=args.model_kwargs, split=args.split,
                num=args.num, batch_size=args.batch_size, mode=args.mode, eps=args.eps, out=args.out,
                root=args.data_dir, plot=not args.no_plot)
    return 0


def _cmd_attention(args) -> int:
    from tractable.experiments.crate.commands import run_attention

    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold: the fraction of attention mass to keep must be in [0, 1] (0: off), got "
                         f"{args.threshold}")
    run_attention(args.source, args.images, model=args.model, model_kwargs=args.model_kwargs, layer=args.layer,
                  threshold=None if args.threshold == 0 else args.threshold, pca=args.pca,
                  image_size=args.image_size, mean=args.mean, std=args.std, out=args.out, root=args.data_dir)
    return 0


def _common(p, command: str) -> None:
    p.add_argument("source", metavar="RUN_OR_CKPT",
                   help="a run directory of `tractable train`, or a checkpoint file (.pth/.pt/.safetensors; "
                        "official {'state_dict': ...} files with module. prefixes are fine) together with --model")
    p.add_argument("--model", default=None, help="registry name of the checkpoint's model (crate_tiny, crate_small, "
                                                 "crate_small_8, crate, ...); default: the run's config")
    p.add_argument("--model-kwargs", type=_kwargs, default=None, metavar="JSON",
                   help="extra model arguments as JSON, e.g. '{\"patch_size\": 8}' (shape is read off the weights)")
    p.add_argument("--data-dir", default=None, help="dataset root (default: the run's, $TRACTABLE_DATA, ...)")
    p.add_argument("--out", default=None,
                   help=f"output directory (default: RUN/{command} for a run, ./{command}-<checkpoint name> for a "
                        f"file); the results go into a sub-folder named after the options, and a directory holding "
                        f"another command's results is refused")


def add_commands(sub) -> None:
    """Add this family's subcommands to the ``tractable`` parser's subparsers."""
    m = sub.add_parser(
        "crate-measure", help="layer-wise coding rate R^c and ISTA sparsity of a CRATE (JSON + plot)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Per layer: R^c of the qkv output (mean ± std over images), R, ΔR and the non-zero fraction "
                    "of the ISTA output, as the CRATE paper's Fig. 3/4.\n\nexamples:\n"
                    "  tractable crate-measure runs/crate-s0 --data fashion_mnist\n"
                    "  tractable crate-measure crate_s.pth --model crate_small --data imagenet --data-dir /data/in1k "
                    "--num 512")
    _common(m, "crate-measure")
    m.add_argument("--data", default=None, help="dataset to measure on (default: the run's dataset)")
    m.add_argument("--split", default="test", help="dataset split (default test)")
    m.add_argument("--num", type=int, default=256, help="number of images (default 256)")
    m.add_argument("--batch-size", type=int, default=64)
    m.add_argument("--mode", choices=["official", "paper"], default="official",
                   help="official: unit-normalised qkv tokens, linear eps=0.01 (the reference figures); paper: "
                        "U_k^T Z^{l+1/2} with eps^2 (default eps 0.1)")
    m.add_argument("--eps", type=float, default=None, help="ε (default 0.01 official / 0.1 paper)")
    m.add_argument("--no-plot", action="store_true")
    m.set_defaults(func=_cmd_measure)

    a = sub.add_parser(
        "crate-attention", help="cls-token attention maps per head, 60%%-mass threshold, PCA (PNG grid)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Saliency maps of the cls token for every head at a layer, upsampled to the image; the head "
                    "average and its top-60%-mass patches; optionally the PCA of the patch features.\n\n"
                    "examples:\n"
                    "  tractable crate-attention runs/crate-s0 fashion_mnist:test:0,1,2,3 --pca\n"
                    "  tractable crate-attention crate_s.pth --model crate_small cat.jpg dog.png --image-size 480")
    _common(a, "crate-attention")
    a.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, or dataset items NAME:SPLIT:I,J,... (e.g. cifar10:test:0,1)")
    a.add_argument("--layer", type=int, default=-1, help="0-based layer (default -1: the last)")
    a.add_argument("--threshold", type=float, default=0.6,
                   help="keep the top patches holding this fraction of the attention mass (0: off; default 0.6)")
    a.add_argument("--pca", action="store_true", help="add the PCA of the layer's qkv patch features and a mask")
    a.add_argument("--image-size", type=int, default=None,
                   help="resize inputs to this size (a multiple of the patch size; positions are interpolated)")
    a.add_argument("--mean", type=_floats, default=None, help="per-channel mean for image files (default ImageNet)")
    a.add_argument("--std", type=_floats, default=None, help="per-channel std for image files (default ImageNet)")
    a.set_defaults(func=_cmd_attention)
