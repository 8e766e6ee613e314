"""Commands of the crate family (crate-measure, crate-attention, linear-probe): argument parsing only; the work is in
:mod:`tractable.experiments.crate`."""
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


def _model_kwargs(args):
    kw = dict(args.model_kwargs or {})
    if args.pos_interp is not None:
        kw["pos_interp"] = args.pos_interp
    return kw or None


def _cmd_measure(args) -> int:
    from tractable.experiments.crate.commands import run_measure

    if args.over_training and args.split != "test":
        raise ValueError("--over-training measures the train and the test split; drop --split")
    run_measure(args.source, args.data, model=args.model, model_kwargs=_model_kwargs(args), split=args.split,
                num=args.num, batch_size=args.batch_size, mode=args.mode, eps=args.eps, out=args.out,
                root=args.data_dir, plot=not args.no_plot, alpha=args.alpha, over_training=args.over_training)
    return 0


def _cmd_attention(args) -> int:
    from tractable.experiments.crate.commands import run_attention

    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold: the fraction of attention mass to keep must be in [0, 1] (0: off), got "
                         f"{args.threshold}")
    run_attention(args.source, args.images, model=args.model, model_kwargs=_model_kwargs(args), layer=args.layer,
                  threshold=None if args.threshold == 0 else args.threshold, pca=args.pca,
                  image_size=args.image_size, mean=args.mean, std=args.std, out=args.out, root=args.data_dir,
                  alpha=args.alpha)
    return 0


def _cmd_probe(args) -> int:
    from tractable.experiments.crate.probe import run_linear_probe

    if args.pool not in (None, "cls", "mean"):  # argparse choices already; kept for programmatic use
        raise ValueError(f"--pool must be cls or mean, got {args.pool!r}")
    run_linear_probe(args.source, args.data, train_num=args.train_num, test_num=args.test_num,
                     batch_size=args.batch_size, pool=args.pool, root=args.data_dir, out=args.out, seed=args.seed)
    return 0


def _unit(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return v


def _common(p, command: str) -> None:
    p.add_argument("source", metavar="RUN_OR_CKPT",
                   help="a run directory of `tractable train`, or a checkpoint file (.pth/.pt/.safetensors; "
                        "official {'state_dict': ...} files with module. prefixes are fine) together with --model")
    p.add_argument("--model", default=None,
                   help="registry name of the checkpoint's model (crate_tiny, crate_small, crate_base_8, crate, "
                        "mae_crate_base, ...) or a released layout (crate_small.in1k, crate_base_demo.in21k, "
                        "mae_crate_base.in1k_lmd5; released files are recognised by name); default: the run's config")
    p.add_argument("--alpha", type=_unit, default=None,
                   help="for a subspace run (line/curve): the point α in [0, 1] to measure (0.5 = the midpoint)")
    p.add_argument("--pos-interp", choices=["exact", "dino"], default=None,
                   help="position-embedding interpolation for other input sizes: exact (bicubic to the size) or "
                        "dino (DINO's scale_factor + 0.1, as the emergence notebooks)")
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
        description="Per layer: R^c of the qkv output (mean ± std over images) and the non-zero fraction of the "
                    "ISTA output, as the CRATE paper's Fig. 3/4 (R and ΔR = R − R^c with --mode paper). Images are "
                    "streamed from any registered dataset (ImageFolder/ImageNet one image at a time), spread evenly "
                    "over the split.\n\nexamples:\n"
                    "  tractable crate-measure runs/crate-s0 --data fashion_mnist\n"
                    "  tractable crate-measure runs/crate-s0 --over-training --num 256\n"
                    "  tractable crate-measure runs/line-s0 --alpha 0.5\n"
                    "  tractable crate-measure CRATE_S.pth --model crate_small --data imagenet --data-dir /data "
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
    m.add_argument("--over-training", action="store_true",
                   help="measure every checkpoint of the run (train and test images) and draw the curves over "
                        "training (over_training.json/.md/.png)")
    m.add_argument("--no-plot", action="store_true")
    m.set_defaults(func=_cmd_measure)

    a = sub.add_parser(
        "crate-attention", help="cls-token attention maps per head, 60%%-mass threshold, PCA (PNG grid)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Saliency maps of the cls token for every head at a layer, upsampled to the image; the head "
                    "average and its top-60%-mass patches; optionally the PCA of the patch features.\n\n"
                    "examples:\n"
                    "  tractable crate-attention runs/crate-s0 fashion_mnist:test:0,1,2,3 --pca\n"
                    "  tractable crate-attention crate-demo.pth cat.jpg dog.png --image-size 480 --pca "
                    "--pos-interp dino\n"
                    "  tractable crate-attention runs/crate-s0 imagefolder:val:0,100,200 --data-dir /data/photos")
    _common(a, "crate-attention")
    a.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, or dataset items NAME:SPLIT:I,J,... (e.g. cifar10:test:0,1)")
    a.add_argument("--layer", type=int, default=-1, help="0-based layer (default -1: the last)")
    a.add_argument("--threshold", type=float, default=0.6,
                   help="keep the top patches holding this fraction of the attention mass (0: off; default 0.6)")
    a.add_argument("--pca", action="store_true",
                   help="the notebooks' PCA pipeline on the layer's qkv patch features: foreground mask (polarity "
                        "fixed by the attention) and a second PCA of the foreground patches")
    a.add_argument("--image-size", type=int, default=None,
                   help="resize inputs to this size (a multiple of the patch size; positions are interpolated)")
    a.add_argument("--mean", type=_floats, default=None, help="per-channel mean for image files (default ImageNet)")
    a.add_argument("--std", type=_floats, default=None, help="per-channel std for image files (default ImageNet)")
    a.set_defaults(func=_cmd_attention)

    lp = sub.add_parser(
        "linear-probe", help="frozen-feature logistic regression of a CRATE, CRATE-MAE or ViT run (JSON + table)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Extracts the frozen features of a run's model (CRATE: pooled last-layer tokens; CRATE-MAE: "
                    "the unmasked encoder after its norm; ViT: the final LayerNorm output), standardises them and "
                    "fits softmax regression (L-BFGS, L2 chosen on a held-out tenth of the training features).\n\n"
                    "examples:\n"
                    "  tractable linear-probe runs/mae-s0 --data fashion_mnist\n"
                    "  tractable linear-probe runs/crate-s0 --train-num 60000 --test-num 10000")
    lp.add_argument("source", metavar="RUN", help="a run directory of `tractable train`")
    lp.add_argument("--data", default=None, help="dataset (default: the run's)")
    lp.add_argument("--data-dir", default=None, help="dataset root (default: the run's, $TRACTABLE_DATA, ...)")
    lp.add_argument("--train-num", type=int, default=10000, help="training images (spread over the split; 10000)")
    lp.add_argument("--test-num", type=int, default=10000, help="test images (default 10000)")
    lp.add_argument("--batch-size", type=int, default=256)
    lp.add_argument("--pool", choices=["cls", "mean"], default=None, help="token pooling (default: the model's)")
    lp.add_argument("--seed", type=int, default=0, help="seed of the held-out split that picks the L2 penalty")
    lp.add_argument("--out", default=None, help="output directory (default RUN/linear-probe)")
    lp.set_defaults(func=_cmd_probe)
