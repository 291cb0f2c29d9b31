"""`robustscale data convert SRC DST` and `robustscale data info PATH`: extra-data image sets."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="convert an image set to the memory-mapped layout, or describe one",
        description="Image sets for extra (synthetic) data or an 'arrays' dataset: a folder "
        "with image.npy (uint8 N x H x W x C) and label.npy, read memory-mapped.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    c = verbs.add_parser(
        "convert",
        help="write an .npz (or shards) as image.npy + label.npy, chunk by chunk",
        description="Convert SRC (an .npz with 'image' and 'label', a folder of image.npy + "
        "label.npy, or shards) into the folder DST, chunk by chunk with memory "
        "independent of N. DST appears only when complete.",
    )
    c.add_argument(
        "src", help="an .npz, or a folder holding image.npy/label.npy or image-00000.npy shards"
    )
    c.add_argument("dst", help="the new folder to write (must not exist)")
    c.add_argument(
        "--shard-size", type=int, help="write shards of this many images (default: one file)"
    )
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=run_convert)
    i = verbs.add_parser(
        "info", help="print N, image shape, label histogram and bytes of an image set"
    )
    i.add_argument("path", help="an .npz, or a folder holding image.npy/label.npy or shards")
    i.set_defaults(func=run_info)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_convert(args: argparse.Namespace) -> int:
    from robustscale.data.convert import convert, describe

    dst = convert(args.src, args.dst, shard_size=args.shard_size, progress=not args.no_progress)
    d = describe(dst)
    print(f"{d['n']} images {tuple(d['image_shape'])} -> {dst} ({d['bytes_on_disk'] / 1e6:.1f} MB)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from robustscale.data.convert import describe

    d = describe(args.path)
    print(f"path         {d['path']} ({d['layout']})")
    print(f"images       {d['n']} x {' x '.join(map(str, d['image_shape']))} {d['dtype']}")
    print(f"bytes        {d['image_bytes']} of images, {d['bytes_on_disk']} on disk")
    print("labels       " + (", ".join(f"{k}: {v}" for k, v in d["labels"].items()) or "none"))
    return 0
