"""A fake decoder for hand-worked decoding tests: the next-token distribution depends on the last token only."""
import torch

BOS, EOS, PAD = 1, 2, 0


class TableModel(torch.nn.Module):
    """A fake decoder whose next-token distribution depends only on the previous token: beam search
    on it can be worked by hand."""

    pad_id = PAD

    def __init__(self, table):
        super().__init__()
        self.table = table  # dict prev_token -> list of probabilities over the vocabulary

    def init_decode(self, src, max_len=10, use_cache=True):
        self.init_args = {"max_len": max_len, "use_cache": use_cache}
        self.first_step = None  # (rows, tokens) of the first decoding step

        class State:
            def reorder(self, index):
                return self
        return State()

    def decode_step(self, tokens, state, need_weights=False):
        if self.first_step is None:
            self.first_step = (tokens.size(0), tokens[:, -1].tolist())
        uniform = [0.2] * 5  # rows for tokens the table does not list (low-scoring beams)
        probs = torch.tensor([self.table.get(int(t), uniform) for t in tokens[:, -1]])
        return probs.log(), state, None


# vocabulary: 0 pad, 1 BOS, 2 EOS, 3 "a", 4 "b"; the next-token probabilities depend on the last token only
E = 1e-9
HAND_TABLE = {
    BOS: [E, E, 0.4, 0.35, 0.25],
    3: [E, E, 0.9, 0.06, 0.04],  # after "a"
    4: [E, E, 0.6, 0.25, 0.15],  # after "b"
}
