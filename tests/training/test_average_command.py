"""attnlab average: a finished run's last K checkpoints averaged element-wise into a new model directory."""
import torch

from attnlab.cli import main
from attnlab.run_dir import load_run
from attnlab.training.checkpoint import list_checkpoints, load_weights


def test_average_of_the_last_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--task", "copy", "--n-train", "200", "--preset", "test", "--vocab-size", "40", "--out", str(run),
                 "--max-steps", "6", "--no-progress", "--set", "eval_every=2", "--set", "eval_bleu_sentences=0",
                 "--set", "keep_last=3", "--set", "threads=1"]) == 0
    assert main(["average", "--model", str(run), "--last", "2", "--out", str(tmp_path / "avg")]) == 0
    averaged = load_run(tmp_path / "avg").model.state_dict()
    model = load_run(run).model
    ckpts = list_checkpoints(run)[-2:]
    weights = []
    for c in ckpts:
        load_weights(model, c / "model.safetensors")
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    for k in averaged:
        assert torch.allclose(averaged[k], (weights[0][k] + weights[1][k]) / 2, atol=1e-7), k
    assert not torch.equal(weights[0]["output_projection.weight"], weights[1]["output_projection.weight"])
    capsys.readouterr()
    assert main(["average", "--model", str(run), "--last", "9", "--out", str(tmp_path / "x")]) == 2
    assert "fewer than --last 9" in capsys.readouterr().err
