"""Caption images with a trained captioner (Show, Attend and Tell or the Transformer captioner).

Used by `attnlab caption`, validation during training, and the HTTP service (`caption(bytes, beam)`).
Captioners speak the same decoding protocol as the translators, so greedy and beam search are the
library's own; attention over the image regions comes from a teacher-forced pass on the output.

Place in the layering: applications; imports only from training and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from attnlab.decoding import beam_search, greedy
from attnlab.models.registry import supports
from attnlab.run_dir import load_run


class Captioner:
    def __init__(self, model: nn.Module, vocab: Any, device: str | torch.device = "cpu", meta: dict | None = None):
        self.model = model.to(device).eval()
        self.vocab = vocab
        self.device = torch.device(device)
        self.meta = meta or {}

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "Captioner":
        run = load_run(path, device)
        if not supports(run.meta.get("arch", "transformer"), "captioning"):
            raise ValueError(f"{path} holds a {run.meta.get('arch')!r} model, not an image captioner")
        return cls(run.model, run.tokenizers, device, run.meta)

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def grid_shape(self) -> tuple[int, int]:
        return tuple(self.model.grid_shape)  # type: ignore[return-value]

    def load_images(self, paths: Sequence[str | Path]) -> Tensor:
        from attnlab.data.images import load_image

        return torch.stack([load_image(p, self.image_size) for p in paths])

    def image_from_bytes(self, data: bytes) -> Tensor:
        from PIL import Image

        from attnlab.data.images import pil_to_tensor, to_rgb

        try:
            with Image.open(io.BytesIO(data)) as im:
                return pil_to_tensor(to_rgb(im), self.image_size)
        except (OSError, SyntaxError, ValueError) as err:
            raise ValueError(f"cannot read the image: {err}") from None

    @torch.no_grad()
    def caption_ids(self, images: Tensor, beam: int = 1, max_len: int = 30) -> list[list[int]]:
        """images (B, 3, H, W) -> word ids per image (no BOS/EOS/pad)."""
        images = images.to(self.device)
        bos, eos, pad = self.vocab.bos_id, self.vocab.eos_id, self.vocab.pad_id
        if beam <= 1:
            out = greedy(self.model, images, max_len=max_len, bos_id=bos, eos_id=eos)
            rows = [r.tolist() for r in out]
        else:
            rows = [h[0].tokens for h in beam_search(self.model, images, beam_size=beam, max_len=max_len,
                                                      bos_id=bos, eos_id=eos)]
        result = []
        for row in rows:
            ids = []
            for t in row:
                if t == eos:
                    break
                if t != pad:
                    ids.append(t)
            result.append(ids)
        return result

    def captions(self, images: Tensor, beam: int = 1, max_len: int = 30, batch_size: int = 64) -> list[str]:
        out: list[str] = []
        for start in range(0, images.size(0), batch_size):
            out += [self.vocab.decode(ids) for ids in self.caption_ids(images[start:start + batch_size], beam, max_len)]
        return out

    @torch.no_grad()
    def attention(self, image: Tensor, ids: list[int]) -> Tensor:
        """(3, H, W) and a caption's ids -> (len(ids) + 1, R): attention over regions for each word and EOS
        (last layer, mean over heads)."""
        bos = self.vocab.bos_id
        tgt = torch.tensor([[bos] + ids], device=self.device)
        cross = self.model.attention_maps(image[None].to(self.device), tgt)["cross"]  # (L, 1, H, T, R)
        return cross[-1, 0].mean(0).float().cpu()

    def caption(self, image_bytes: bytes, beam: int = 1) -> dict[str, Any]:
        """The HTTP service's interface: caption, words, per-word attention over the grid, grid shape."""
        image = self.image_from_bytes(image_bytes)
        ids = self.caption_ids(image[None], beam)[0]
        weights = self.attention(image, ids)[: len(ids)]
        return {"caption": self.vocab.decode(ids), "words": [self.vocab.id_to_token(i) for i in ids],
                "attention": [[round(float(w), 5) for w in row] for row in weights], "grid": list(self.grid_shape)}

    def plot(self, image: Tensor, ids: list[int], path: str | Path, title: str = "") -> Path:
        from attnlab.viz.caption_attention import plot_caption_attention

        words = [self.vocab.id_to_token(i) for i in ids]
        weights = self.attention(image, ids)[: len(words)]
        return plot_caption_attention(image, words, weights, self.grid_shape, path, title=title)


@torch.no_grad()
def attention_on_objects(captioner: Captioner, scenes: Sequence[Any], beam: int = 1) -> dict[str, float]:
    """For generated scenes (attnlab.data.images.Scene): when the caption names an object ("red circle"),
    how much of the attention behind those two words lies on the grid cells the object touches.

    Returns the mean attention mass on the object (`mass`), what uniform attention would put there
    (`chance`, the object's share of the cells), and how many words were measured (`words`).
    """
    from attnlab.data.images import region_mask, scene_tensors

    images = scene_tensors(scenes)
    size = images.size(-1)
    all_ids = captioner.caption_ids(images, beam)
    mass, chance = [], []
    for scene, image, ids in zip(scenes, images, all_ids):
        words = [captioner.vocab.id_to_token(i) for i in ids]
        if not words:
            continue
        weights = captioner.attention(image, ids)[: len(words)]  # (T, R)
        for obj in scene.objects:
            cells = (region_mask(obj.box, size, captioner.grid_shape) > 0).float()
            for t in range(len(words) - 1):
                if words[t] == obj.colour and words[t + 1] == obj.shape:
                    for pos in (t, t + 1):
                        mass.append(float(weights[pos] @ cells))
                        chance.append(float(cells.mean()))
    n = len(mass)
    return {"mass": sum(mass) / n if n else float("nan"), "chance": sum(chance) / n if n else float("nan"),
            "words": n}
