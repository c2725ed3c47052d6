"""Image captioning with attention: the model looks at a different part of the picture for each word.

Show, Attend and Tell (arch "sat"): Xu et al. 2015, soft ("deterministic") attention.
    a_1..a_L = CNN(image)                            L regions of a grid, each a D-dim vector
    h_0, c_0 = tanh(f_init_h(mean_i a_i)), tanh(f_init_c(mean_i a_i))
    e_ti     = f_att(a_i, h_{t-1}) = v^T tanh(W_a a_i + W_h h_{t-1} + b)      (additive attention)
    alpha_t  = softmax(e_t)                           weights over the L regions
    beta_t   = sigmoid(f_beta(h_{t-1}))               the gating scalar (section 4.2.1)
    z_t      = beta_t * sum_i alpha_ti a_i            the context vector
    h_t      = LSTM(h_{t-1}, [E y_{t-1}; z_t])
    p(y_t)   = softmax(L_o(E y_{t-1} + L_h h_t + L_z z_t))                   (deep output, eq. 7)
    loss     = -log p(y | a) + lambda * sum_i (1 - sum_t alpha_ti)^2        (doubly stochastic, eq. 14)

Transformer captioner (arch "caption-transformer"): the decoder of attnlab.models.transformer over a
ViT-style encoder: patch embedding (one linear map per P x P patch) + positions + N encoder layers of
multi-head self-attention over the patches (Dosovitskiy et al. 2021); or CNN regions (`encoder="cnn"`).

Both speak the decoding protocol of attnlab.decoding (the source is a batch of images (B, 3, H, W)),
so greedy, beam search and BLEU are the translators' own, and `attention_maps(images, tgt)["cross"]`
is (L, B, H, T, R) over the R regions of `grid_shape`, as for translation.

Place in the layering: models; imports only from layers and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.config import TransformerConfig
from attnlab.layers.attention import AdditiveAttention
from attnlab.layers.embedding import PatchEmbedding, TokenEmbedding, positional_encoding
from attnlab.models import registry
from attnlab.models.transformer import Encoder, Transformer, check_tokens
from attnlab.models.vision import BACKBONES, region_encoder


def check_images(images: Any, image_size: int) -> None:
    """A one-line ValueError unless `images` is a float (B, 3, image_size, image_size) tensor."""
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor (B, 3, H, W), got {type(images).__name__}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point (normalised pixels), got dtype {images.dtype}")
    if images.dim() != 4 or images.size(1) != 3 or images.size(2) != image_size or images.size(3) != image_size:
        raise ValueError(f"images must have shape (B, 3, {image_size}, {image_size}) (see attnlab.data.images."
                         f"load_image), got {tuple(images.shape)}")
    if images.size(0) == 0:
        raise ValueError("images is an empty batch")


class _ConfigIO:
    """to_dict / from_dict / preset for the captioning configs (PRESETS on the class)."""

    PRESETS: dict[str, dict[str, Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**values)

    @classmethod
    def preset(cls, name: str, **overrides: Any):
        if name not in cls.PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(cls.PRESETS)}")
        return cls(**{"vocab_size": 1000, **cls.PRESETS[name], **overrides})


# ---- Show, Attend and Tell ----------------------------------------------------------------------
@dataclass
class SATConfig(_ConfigIO):
    vocab_size: int
    image_size: int = 64  # pictures are resized to image_size x image_size
    grid_size: int = 8  # L = grid_size^2 regions (the paper: 14 x 14 from VGG conv5_4)
    d_feature: int = 128  # D, one region's feature vector
    d_embed: int = 64  # m, word embedding
    d_hidden: int = 256  # n, LSTM state
    d_attn: int = 128  # f_att's hidden layer
    dropout: float = 0.3  # on h_t before the deep output (the paper uses dropout)
    alpha_c: float = 1.0  # lambda of the doubly stochastic regulariser (0 turns it off)
    backbone: str = "scratch"  # "scratch" (trained here) or a torchvision ResNet name
    pretrained: bool = False  # torchvision backbone with ImageNet weights (downloaded by torchvision)
    freeze_backbone: bool = True
    cnn_channels: int = 32  # width of the first stage of the scratch CNN
    region_positions: bool = True  # add a learned embedding of each region's place in the grid (not in the paper)
    pad_id: int = 0
    arch: str = "sat"

    PRESETS = {
        "test": dict(image_size=32, grid_size=4, d_feature=32, d_embed=16, d_hidden=32, d_attn=16, dropout=0.0,
                     cnn_channels=8),
        # the scenes task on a CPU in minutes: 32 x 32 pictures, 8 x 8 regions of 4 x 4 pixels
        "tiny": dict(image_size=32, grid_size=8, d_feature=64, d_embed=32, d_hidden=128, d_attn=64, dropout=0.1,
                     cnn_channels=16),
        "small": dict(image_size=128, grid_size=8, d_feature=256, d_embed=256, d_hidden=512, d_attn=256,
                      cnn_channels=32),
        # the paper's sizes with a pretrained ResNet (torchvision): 14 x 14 regions
        "paper": dict(image_size=224, grid_size=14, d_feature=512, d_embed=512, d_hidden=1800, d_attn=512,
                      backbone="resnet50", pretrained=True, dropout=0.5),
    }

    def __post_init__(self) -> None:
        for name in ("vocab_size", "image_size", "grid_size", "d_feature", "d_embed", "d_hidden", "d_attn"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"SATConfig.{name} must be a positive int, got {value!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"SATConfig.backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if not 0.0 <= self.dropout < 1.0 or self.alpha_c < 0:
            raise ValueError("SATConfig.dropout must be in [0, 1) and alpha_c >= 0")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id {self.pad_id} is outside the vocabulary")


@dataclass
class SATState:
    """Decoder state; `reorder` follows beam search. Without `use_cache`, `hidden` stays at h_0, c_0
    and each step replays the whole prefix (the reference the cached path must equal)."""

    memory: Tensor  # (B, L, D) annotation vectors
    precomputed: Tensor  # (B, L, d_attn) W_a a_i + b, once per image
    hidden: tuple[Tensor, Tensor]  # h, c: (B, d_hidden) each
    steps: int = 0
    use_cache: bool = True

    @property
    def batch_size(self) -> int:
        return self.memory.size(0)

    def reorder(self, index: Tensor) -> "SATState":
        index = index.to(self.memory.device)
        self.memory = self.memory.index_select(0, index)
        self.precomputed = self.precomputed.index_select(0, index)
        self.hidden = (self.hidden[0].index_select(0, index), self.hidden[1].index_select(0, index))
        return self


class ShowAttendTell(nn.Module):
    def __init__(self, cfg: SATConfig):
        super().__init__()
        self.cfg = cfg
        self.pad_id = cfg.pad_id
        self.encoder = region_encoder(cfg.backbone, cfg.image_size, cfg.grid_size, cfg.d_feature, cfg.cnn_channels,
                                      cfg.pretrained, cfg.freeze_backbone)
        self.grid_shape = self.encoder.grid_shape
        n_regions = self.grid_shape[0] * self.grid_shape[1]
        # where a region is: a small CNN's features barely say (a pretrained ResNet's do, through padding)
        self.region_positions = positional_encoding("learned", cfg.d_feature, n_regions) if cfg.region_positions else None
        if self.region_positions is not None:
            # as loud as the features from the start (std 1, not d^-0.5): with the quiet start the scenes
            # captioner said the relation ("left of" / "right of") right in 45% of captions after 1500 steps
            # and put 0.58 of its attention on the objects it named; with std 1, 89% and 0.64
            nn.init.normal_(self.region_positions.embedding.weight, std=1.0)
        d, n = cfg.d_feature, cfg.d_hidden
        self.init_h = nn.Linear(d, n)  # f_init,h
        self.init_c = nn.Linear(d, n)  # f_init,c
        self.attention = AdditiveAttention(n, d, cfg.d_attn)  # f_att
        self.gate = nn.Linear(n, 1)  # f_beta
        self.embedding = TokenEmbedding(cfg.vocab_size, cfg.d_embed, cfg.pad_id, scale=False)  # E
        self.lstm = nn.LSTMCell(cfg.d_embed + d, n)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out_h = nn.Linear(n, cfg.d_embed)  # L_h
        self.out_z = nn.Linear(d, cfg.d_embed, bias=False)  # L_z
        self.output_projection = nn.Linear(cfg.d_embed, cfg.vocab_size)  # L_o

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    def encode(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) -> annotation vectors (B, L, D)."""
        check_images(images, self.cfg.image_size)
        regions = self.encoder(images)
        return self.region_positions(regions) if self.region_positions is not None else regions

    def _start(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        mean = memory.mean(dim=1)  # (B, D)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))

    def _run(self, tokens: Tensor, state: SATState, hidden: tuple[Tensor, Tensor]):
        """Feed tokens (B, T) from `hidden`: logits (B, T, V), alphas (B, T, L), final hidden."""
        emb = self.embedding(tokens)  # (B, T, m)
        h, c = hidden
        logits, alphas = [], []
        for t in range(tokens.size(1)):
            context, alpha = self.attention(h, state.memory, None, state.precomputed)  # (B, D), (B, L)
            z = torch.sigmoid(self.gate(h)) * context  # gating scalar beta_t
            h, c = self.lstm(torch.cat([emb[:, t], z.to(emb.dtype)], dim=-1), (h, c))
            deep = emb[:, t] + self.out_h(self.dropout(h)) + self.out_z(z)  # deep output layer
            logits.append(self.output_projection(self.dropout(deep)))
            alphas.append(alpha)
        return torch.stack(logits, 1), torch.stack(alphas, 1), (h, c)

    def _check_tgt(self, tgt: Tensor, batch: int, name: str = "tgt") -> None:
        check_tokens(name, tgt, self.cfg.vocab_size)
        if tgt.size(0) != batch:
            raise ValueError(f"images and {name} batch sizes differ: {batch} != {tgt.size(0)}")

    def forward_with_aux(self, images: Tensor, tgt: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing: logits (B, T, V) and the doubly stochastic penalty
        lambda * sum_b sum_i (1 - sum_t alpha_bti)^2 over the real (non-pad) steps."""
        state = self.init_decode(images)
        self._check_tgt(tgt, state.batch_size)
        logits, alphas, _ = self._run(tgt, state, state.hidden)
        real = (tgt != self.pad_id).to(alphas.dtype)[:, :, None]  # (B, T, 1)
        coverage = (alphas * real).sum(dim=1)  # (B, L): how much each region was looked at
        penalty = self.cfg.alpha_c * ((1.0 - coverage) ** 2).sum()
        return logits, penalty

    def forward(self, images: Tensor, tgt: Tensor) -> Tensor:
        """images (B, 3, H, W), tgt (B, T) -> logits (B, T, V); position t predicts tgt[t + 1]."""
        return self.forward_with_aux(images, tgt)[0]

    @torch.no_grad()
    def attention_maps(self, images: Tensor, tgt: Tensor) -> dict[str, Tensor]:
        """Teacher-forced attention over the regions: cross (1, B, 1, T, L)."""
        state = self.init_decode(images)
        self._check_tgt(tgt, state.batch_size)
        _, alphas, _ = self._run(tgt, state, state.hidden)
        return {"cross": alphas[None, :, None]}

    # ---- decoding protocol -----------------------------------------------------------------
    def init_decode(self, images: Tensor, max_len: int = 128, use_cache: bool = True) -> SATState:
        memory = self.encode(images)
        return SATState(memory, self.attention.precompute(memory), self._start(memory), use_cache=use_cache)

    def decode_step(self, tokens: Tensor, state: SATState, need_weights: bool = False):
        """tokens: the prefix so far (B, t), BOS first -> next-token logits (B, V), state, and with
        `need_weights` the attention that produced them, (B, 1, 1, L)."""
        self._check_tgt(tokens, state.batch_size, "tokens")
        if state.use_cache:
            if tokens.size(1) != state.steps + 1:
                raise ValueError(f"decode_step with a cached state takes the prefix one token longer than the "
                                 f"last call: expected length {state.steps + 1}, got {tokens.size(1)}")
            logits, alphas, state.hidden = self._run(tokens[:, -1:], state, state.hidden)
        else:
            logits, alphas, _ = self._run(tokens, state, state.hidden)
        state.steps = tokens.size(1)
        weights = alphas[:, -1, None, None, :] if need_weights else None
        return logits[:, -1], state, weights


# ---- the Transformer captioner ------------------------------------------------------------------
@dataclass
class CaptionTransformerConfig(_ConfigIO):
    vocab_size: int
    image_size: int = 64
    encoder: str = "patch"  # "patch" (ViT) or "cnn" (regions of a CNN, as Show, Attend and Tell)
    patch_size: int = 8  # "patch": the grid is image_size / patch_size on each side
    grid_size: int = 8  # "cnn": the grid of regions
    backbone: str = "scratch"  # "cnn": scratch or a torchvision ResNet
    pretrained: bool = False
    cnn_channels: int = 32
    d_model: int = 128
    n_heads: int = 4
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    d_ff: int = 512
    dropout: float = 0.1
    patch_positions: str = "learned"  # ViT's learned position embeddings, or "sinusoidal"
    norm_first: bool = False
    pad_id: int = 0
    arch: str = "caption-transformer"

    PRESETS = {
        "test": dict(image_size=32, patch_size=8, grid_size=4, d_model=32, n_heads=4, n_encoder_layers=1,
                     n_decoder_layers=1, d_ff=64, dropout=0.0, cnn_channels=8),
        "tiny": dict(image_size=32, patch_size=4, d_model=64, n_heads=4, n_encoder_layers=2, n_decoder_layers=2,
                     d_ff=256),
        "small": dict(image_size=128, patch_size=16, d_model=256, n_heads=4, n_encoder_layers=3, n_decoder_layers=3,
                      d_ff=1024),
    }

    def __post_init__(self) -> None:
        if self.encoder not in ("patch", "cnn"):
            raise ValueError(f"CaptionTransformerConfig.encoder must be 'patch' or 'cnn', got {self.encoder!r}")
        if self.patch_positions not in ("learned", "sinusoidal"):
            raise ValueError(f"patch_positions must be 'learned' or 'sinusoidal', got {self.patch_positions!r}")
        self.text_config()  # validates the Transformer's sizes

    def text_config(self) -> TransformerConfig:
        """The Transformer whose decoder (and encoder layers) the captioner uses."""
        return TransformerConfig(
            src_vocab_size=self.vocab_size, tgt_vocab_size=self.vocab_size, d_model=self.d_model,
            n_heads=self.n_heads, n_layers=self.n_decoder_layers, n_encoder_layers=self.n_encoder_layers,
            n_decoder_layers=self.n_decoder_layers, d_ff=self.d_ff, dropout=self.dropout,
            norm_first=self.norm_first, pad_id=self.pad_id, tie_output=True)


class CaptionTransformer(Transformer):
    """The Transformer with images as its source: regions (patches or CNN cells) + positions ->
    encoder layers -> memory; the text side (output embedding, decoder, output projection, KV-cached
    decoding) is the Transformer's own."""

    trains_packed = False  # every image has the same number of regions: nothing to unpad on the source side

    def __init__(self, cfg: CaptionTransformerConfig):
        super().__init__(cfg.text_config())
        self.caption_cfg = cfg
        del self.input_embedding, self.src_positions  # the source is an image
        if cfg.encoder == "patch":
            self.patch_embedding = PatchEmbedding(cfg.image_size, cfg.patch_size, cfg.d_model)
        else:
            self.patch_embedding = region_encoder(cfg.backbone, cfg.image_size, cfg.grid_size, cfg.d_model,
                                                  cfg.cnn_channels, cfg.pretrained)
        self.grid_shape = self.patch_embedding.grid_shape
        n_regions = self.grid_shape[0] * self.grid_shape[1]
        self.patch_positions = positional_encoding(cfg.patch_positions, cfg.d_model, n_regions)
        if cfg.patch_positions == "learned":
            # std 1, as in Show, Attend and Tell above (ViT starts at 0.02 and trains for far longer): on the
            # scenes after 600 steps, attention mass on the named objects 0.53 with std 1, 0.27 with d^-0.5
            nn.init.normal_(self.patch_positions.embedding.weight, std=1.0)
        self.encoder = Encoder(self.cfg)

    @property
    def image_size(self) -> int:
        return self.caption_cfg.image_size

    def encode_source(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, 3, H, W) -> memory (B, R, d_model), and an all-True key mask (B, 1, 1, R)."""
        check_images(images, self.caption_cfg.image_size)
        x = self.embedding_dropout(self.patch_positions(self.patch_embedding(images)))
        memory, _ = self.encoder(x, None)
        return memory, torch.ones(memory.size(0), 1, 1, memory.size(1), dtype=torch.bool, device=memory.device)

    def encode(self, images: Tensor, src_mask: Tensor | None = None) -> Tensor:
        return self.encode_source(images)[0]

    def _encode_for_decoding(self, images: Tensor) -> tuple[Tensor, Tensor, None]:
        return (*self.encode_source(images), None)  # no padding among regions: nothing to pack

    def forward(self, images: Tensor, tgt: Tensor) -> Tensor:
        """images (B, 3, H, W), tgt (B, T) -> logits (B, T, V); position t predicts tgt[t + 1]."""
        memory, mask = self.encode_source(images)
        if tgt.dim() == 2 and tgt.size(0) != memory.size(0):
            raise ValueError(f"images and tgt batch sizes differ: {memory.size(0)} != {tgt.size(0)}")
        return self.output_projection(self.decode(memory, mask, tgt))

    @torch.no_grad()
    def attention_maps(self, images: Tensor, tgt: Tensor) -> dict[str, Tensor]:
        """encoder (L, B, H, R, R) over patches, decoder_self (L, B, H, T, T), cross (L, B, H, T, R)."""
        from attnlab.layers.masks import decoder_self_mask

        check_images(images, self.caption_cfg.image_size)
        check_tokens("tgt", tgt, self.cfg.tgt_vocab_size)
        x = self.patch_positions(self.patch_embedding(images))
        memory, enc_w = self.encoder(x, None, need_weights=True)
        mask = torch.ones(memory.size(0), 1, 1, memory.size(1), dtype=torch.bool, device=memory.device)
        _, self_w, cross_w = self.decoder(self.embed_tgt(tgt), memory, mask, decoder_self_mask(tgt, self.pad_id),
                                          need_weights=True)
        return {"encoder": torch.stack(enc_w), "decoder_self": torch.stack(self_w), "cross": torch.stack(cross_w)}


CAPTION_ARCHS = ("sat", "caption-transformer")
registry.register("sat", SATConfig, ShowAttendTell, ("captioning", "attention_maps", "beam", "kv_cache"),
                  "Show, Attend and Tell")
registry.register("caption-transformer", CaptionTransformerConfig, CaptionTransformer,
                  ("captioning", "attention_maps", "beam", "kv_cache"), "the Transformer captioner")
