"""Where the captioner looks: on the generated scenes, when it names an object ("red circle"), the
attention behind those two words should lie mostly on that object, far above what uniform attention
would put there. Measured with attnlab.caption.attention_on_objects."""
import numpy as np
import pytest
import torch

from attnlab.caption import Captioner, attention_on_objects
from attnlab.data.batching import pad_to_tensor
from attnlab.data.images import Scene, SceneObject, scene_tensors, scenes_dataset
from attnlab.data.word_vocab import WordVocab
from attnlab.models.captioning import CaptionTransformer, CaptionTransformerConfig, SATConfig, ShowAttendTell


class FixedCaptioner:
    """Says a given caption per image, with given attention over a 2 x 2 grid."""

    grid_shape = (2, 2)

    def __init__(self, captions, weights):
        self.vocab = WordVocab.build(captions)
        self.ids = [self.vocab.encode(c) for c in captions]
        self.weights = weights

    def caption_ids(self, images, beam=1):
        return self.ids[: len(images)]

    def attention(self, image, ids):
        return self.weights[self.ids.index(ids)]


def test_attention_on_objects_by_hand():
    blank = np.zeros((32, 32, 3), np.uint8)
    red, blue = SceneObject("red", "circle", (0, 0, 15, 15)), SceneObject("blue", "square", (16, 16, 31, 31))
    scenes = [Scene([red, blue], "above", blank), Scene([red, blue], "above", blank)]
    said = ["a red circle above a blue square", "a green circle above a blue triangle"]  # the 2nd names neither
    w = torch.full((8, 4), 0.25)  # 7 words + EOS; cells: red = 0 (top left), blue = 3 (bottom right)
    w[1] = torch.tensor([0.7, 0.1, 0.1, 0.1])  # "red"
    w[2] = torch.tensor([0.5, 0.5, 0.0, 0.0])  # "circle"
    w[5] = torch.tensor([0.0, 0.0, 0.1, 0.9])  # "blue"
    w[6] = torch.tensor([0.3, 0.3, 0.1, 0.3])  # "square"
    result = attention_on_objects(FixedCaptioner(said, [w, torch.ones(8, 4)]), scenes)
    assert result["words"] == 4
    assert result["mass"] == pytest.approx((0.7 + 0.5 + 0.9 + 0.3) / 4)
    assert result["chance"] == pytest.approx(0.25)  # each object covers 1 of the 4 cells


def train_on_scenes(arch: str, steps: int, n: int = 3000, batch: int = 64, seed: int = 0):
    """A tiny captioner trained on generated scenes (teacher forcing, Adam): -> Captioner."""
    scenes = scenes_dataset(n, seed=seed, size=32)
    vocab = WordVocab.build([s.caption for s in scenes])
    images = scene_tensors(scenes)
    tgt = pad_to_tensor([[vocab.bos_id] + vocab.encode(s.caption) + [vocab.eos_id] for s in scenes], vocab.pad_id)
    torch.manual_seed(seed)
    if arch == "sat":  # alpha_c = 0: see DEFAULTS["scenes"] in attnlab.pipelines.captioning
        model = ShowAttendTell(SATConfig.preset("tiny", vocab_size=vocab.vocab_size, dropout=0.0, alpha_c=0.0))
    else:
        model = CaptionTransformer(CaptionTransformerConfig.preset("tiny", vocab_size=vocab.vocab_size, dropout=0.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), generator=order)
        x, y = images[idx], tgt[idx]
        logits = model(x, y[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y[:, 1:].reshape(-1),
                                                 ignore_index=vocab.pad_id)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return Captioner(model, vocab)


@pytest.mark.slow  # > 40 s on 2 shared cores (pytest --durations)
def test_show_attend_tell_looks_at_the_object_it_names():
    """~50 s on one CPU thread. Measured mass after 600 steps with seeds 0, 1, 2, 3: 0.589, 0.609, 0.614,
    0.676 (chance 0.21). It stays below ~0.7 when trained longer: the first object named may be either of
    the two (captions name them in either order), and the attention behind its colour word is computed
    before that choice is made (from h_{t-1}, as in the paper), so it is shared between the two."""
    captioner = train_on_scenes("sat", steps=600)
    result = attention_on_objects(captioner, scenes_dataset(100, seed=99, size=32))
    print(f"\nattention on named objects (sat, 600 steps): {result}")
    assert result["words"] >= 100  # it names objects correctly often enough to measure
    assert result["mass"] > 0.5 and result["mass"] > 2.5 * result["chance"], result


@pytest.mark.slow
def test_show_attend_tell_trained_longer():
    """~2.5 minutes. Measured: 0.639 after 1500 steps (chance 0.21)."""
    captioner = train_on_scenes("sat", steps=1500)
    result = attention_on_objects(captioner, scenes_dataset(200, seed=99, size=32))
    print(f"\nattention on named objects (sat, 1500 steps): {result}")
    assert result["words"] >= 200
    assert result["mass"] > 0.55 and result["mass"] > 2.5 * result["chance"], result


@pytest.mark.slow
def test_transformer_captioner_attends_above_chance():
    """~5 minutes. The Transformer attends over patches that its encoder's self-attention has already
    mixed, so its cross-attention is a weaker guide to where it looks: measured 0.53 after 600 steps but
    0.40 after 1500 (chance 0.21). Asserted: well above chance, not "mostly on the object"."""
    captioner = train_on_scenes("caption-transformer", steps=1500)
    result = attention_on_objects(captioner, scenes_dataset(200, seed=99, size=32))
    print(f"\nattention on named objects (caption-transformer, 1500 steps): {result}")
    assert result["words"] >= 200
    assert result["mass"] > 1.5 * result["chance"], result
