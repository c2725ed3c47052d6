"""attnlab export: write a trained Transformer in the formats people deploy with.

  --format hf    a Hugging Face MarianMTModel directory (config.json, model.safetensors, tokenizer):
                 transformers' MarianMTModel.from_pretrained loads it and generate() gives the same
                 translations; `attnlab translate --model DIR` loads it too; so does CTranslate2's
                 ct2-transformers-converter, with the same tokens for a model whose <s> embedding is
                 zero (every model attnlab trains now; the export says so in one line).
  --format onnx  encoder.onnx + decoder_step.onnx (with cache inputs) for onnxruntime.
A model card (README.md: data, training time, BLEU, command) is written with every export.

Place in the layering: commands; imports only from serve and bench and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to Hugging Face (Marian) or ONNX", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="run directory written by 'attnlab train'")
    p.add_argument("--format", choices=["hf", "onnx"], required=True)
    p.add_argument("--out", required=True, help="directory to write")
    p.set_defaults(func=run)


def model_card(run_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Facts for the card from the run's config.json and log.jsonl."""
    task = meta.get("task", {})
    card: dict[str, Any] = {}
    name = task.get("task")
    if name:
        langs = f" {task.get('src_lang')}->{task.get('tgt_lang')}" if task.get("src_lang") else ""
        where = f" from {task['data_dir']}" if task.get("data_dir") else ""
        card["data"] = f"{name}{langs}{where}"
    log = run_dir / "log.jsonl"
    if log.is_file():
        events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        ends = [e for e in events if e.get("event") == "end"]
        if ends:
            card["training_time"] = f"{ends[-1]['minutes']} minutes, {ends[-1]['steps']} steps ({ends[-1].get('amp')})"
        bleus = [e["bleu"] for e in events if e.get("event") == "valid" and "bleu" in e]
        if bleus:
            card["bleu"] = f"{max(bleus)} (validation split, greedy, sacreBLEU)"
    if meta.get("command"):
        card["command"] = meta["command"]
    return card


def check_out_dir(out: str, fmt: str) -> None:
    """A new or empty directory, or an earlier export of the same format: never files that are not
    ours (an export writes README.md and config.json, which must not land in a project's root)."""
    from attnlab.export.onnx import ENCODER_FILE
    from attnlab.run_dir import is_marian_dir

    path = Path(out)
    if not out.strip():
        raise ValueError("--out is empty; name the directory to write")
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory")
    earlier = is_marian_dir(path) if fmt == "hf" else (path / ENCODER_FILE).is_file()
    if path.is_dir() and any(path.iterdir()) and not earlier:
        raise ValueError(f"--out {out} is a directory with other files in it (not an earlier {fmt} export); "
                         "choose a new directory")


def run(args: argparse.Namespace) -> int:
    from attnlab.models.registry import require
    from attnlab.run_dir import load_run

    check_out_dir(args.out, args.format)
    loaded = load_run(args.model)
    require(loaded.meta.get("arch", "transformer"), f"export_{args.format}")
    card = model_card(Path(args.model), loaded.meta)
    if args.format == "hf":
        from attnlab.export import export_marian
        from attnlab.export.hf import ctranslate2_note, special_ids

        export_marian(loaded.model, args.out, tokenizer=loaded.tokenizers, model_card=card)
        note = ctranslate2_note(loaded.model, loaded.tokenizers, special_ids(loaded.tokenizers, None, None)[0])
        print(note or f"CTranslate2: ct2-transformers-converter --model {args.out} --output_dir {args.out}-ct2 "
                      "gives attnlab's tokens")
        if loaded.meta.get("generation"):  # a published Marian model: keep how transformers decodes it
            import shutil

            source = Path(loaded.path) / "generation_config.json"
            if source.is_file():
                shutil.copyfile(source, Path(args.out) / "generation_config.json")
    else:
        from attnlab.export import export_onnx

        export_onnx(loaded.model, args.out, tokenizer=loaded.tokenizers, model_card=card)
    print(f"wrote {args.format} export of {args.model} to {args.out}")
    return 0
