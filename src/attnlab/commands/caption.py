"""attnlab caption: a caption for each image, and with --attention-out a picture per image of where
the model looked for each word (the attention over the image regions, upsampled, one panel per word).
Prints one line per image: PATH<TAB>caption, then <TAB>PICTURE with --attention-out.

Place in the layering: commands; imports only from serve and bench and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="caption images with a trained captioner", description=__doc__)
    p.add_argument("--model", required=True, help="run directory of a captioner (attnlab train --task scenes|captions)")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...; any size, grayscale or RGBA is fine)")
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--max-len", type=int, default=30)
    p.add_argument("--attention-out", default=None, help="folder for one attention picture per image")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnlab.caption import Captioner
    from attnlab.device import parse_device

    if args.beam < 1:
        raise ValueError(f"--beam must be >= 1, got {args.beam}")
    captioner = Captioner.load(args.model, parse_device(args.device))
    images = captioner.load_images(args.images)  # a bad file is a one-line ValueError naming it
    ids = captioner.caption_ids(images, args.beam, args.max_len)
    out_dir = Path(args.attention_out) if args.attention_out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for path, image, caption_ids in zip(args.images, images, ids):
        text = captioner.vocab.decode(caption_ids)
        line = f"{path}\t{text}"
        if out_dir:
            name = Path(path).stem
            while name in used:  # two images with the same name in different folders
                name += "_"
            used.add(name)
            png = captioner.plot(image, caption_ids, out_dir / f"{name}.attention.png", title=text or "(no words)")
            line += f"\t{png}"
        print(line)
    return 0
