"""Checkpoints: atomic, verified on load, weights only, clear errors for anything foreign or broken."""
import json
import os

import pytest
import torch

from attnlab import Transformer, TransformerConfig
from attnlab.training.checkpoint import (
    CheckpointError,
    average_checkpoints,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
)


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    values = dict(src_vocab_size=20, tgt_vocab_size=20, d_model=16, n_heads=2, n_layers=1, d_ff=32, dropout=0.0)
    values.update(kw)
    return Transformer(TransformerConfig(**values))


def test_save_and_load_round_trip_with_optimizer_and_rng(tmp_path):
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 2, dtype=torch.long)).sum().backward()
    opt.step()
    rng = torch.get_rng_state()
    path = save_checkpoint(tmp_path, 7, model, opt, None, {"epoch": 2, "batch_in_epoch": 5})
    assert path.name == "step-0000007" and latest_checkpoint(tmp_path) == path
    expected_next = torch.rand(3)
    other = tiny_model(seed=1)
    other_opt = torch.optim.Adam(other.parameters(), lr=1e-3)
    torch.set_rng_state(rng)
    torch.rand(100)
    state = load_checkpoint(path, other, other_opt)
    assert state["step"] == 7 and state["epoch"] == 2 and state["batch_in_epoch"] == 5
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(torch.rand(3), expected_next)  # the RNG continues where it was saved
    assert other_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_tied_weights_survive_and_only_keep_last(tmp_path):
    model = tiny_model(share_embeddings=True)
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, model, None, None, {}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000004", "step-0000005"]
    other = tiny_model(seed=3, share_embeddings=True)
    load_checkpoint(list_checkpoints(tmp_path)[-1], other)
    assert other.output_projection.weight is other.output_embedding.weight
    assert torch.equal(other.input_embedding.weight, model.input_embedding.weight)


def test_corrupt_truncated_and_foreign_checkpoints_are_clear_errors(tmp_path):
    model = tiny_model()
    path = save_checkpoint(tmp_path, 1, model, None, None, {})
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="corrupt.*sha256"):
        load_checkpoint(path, model)
    # a truncated weights file without a manifest is still caught by safetensors
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or not safetensors"):
        load_weights(model, lone)
    # a foreign state.json
    (path / "state.json").write_text(json.dumps({"step": 1}))
    with pytest.raises(CheckpointError, match="not an attnlab checkpoint"):
        load_checkpoint(path, model)
    (path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="state.json unreadable"):
        load_checkpoint(path, model)


def test_mismatched_model_is_a_clear_error(tmp_path):
    save_weights(tiny_model(), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="do not fit the model config"):
        load_weights(tiny_model(d_model=32, n_heads=4), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="do not fit the model config"):
        load_weights(tiny_model(n_layers=2), tmp_path / "w.safetensors")


def test_optimizer_file_is_never_unpickled_as_code(tmp_path):
    model = tiny_model()
    path = save_checkpoint(tmp_path, 1, model, None, None, {})

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, path / "optimizer.pt")
    state = json.loads((path / "state.json").read_text())
    from attnlab.training.checkpoint import sha256

    state["files"]["optimizer.pt"] = sha256(path / "optimizer.pt")
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="optimizer.pt unreadable"):
        load_checkpoint(path, model)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_directory_keeps_previous_checkpoint(tmp_path):
    model = tiny_model()
    save_checkpoint(tmp_path, 1, model, None, None, {})
    os.chmod(tmp_path / "checkpoints", 0o500)
    try:
        with pytest.raises(CheckpointError, match="previous checkpoint step-0000001 is kept"):
            save_checkpoint(tmp_path, 2, model, None, None, {})
    finally:
        os.chmod(tmp_path / "checkpoints", 0o700)
    assert latest_checkpoint(tmp_path).name == "step-0000001"


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    # simulate a full disk in the middle of writing the second checkpoint
    model = tiny_model()
    save_checkpoint(tmp_path, 1, model, None, None, {})
    import attnlab.training.checkpoint as ck

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device; the previous checkpoint step-0000001 is kept"):
        save_checkpoint(tmp_path, 2, model, None, None, {})
    assert latest_checkpoint(tmp_path).name == "step-0000001"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000001"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    load_checkpoint(latest_checkpoint(tmp_path), tiny_model(seed=5))


def test_average_checkpoints_is_the_mean(tmp_path):
    a, b = tiny_model(seed=1), tiny_model(seed=2)
    save_checkpoint(tmp_path, 1, a, None, None, {})
    save_checkpoint(tmp_path, 2, b, None, None, {})
    avg = tiny_model(seed=3)
    average_checkpoints(list_checkpoints(tmp_path), avg)
    for name, p in avg.state_dict().items():
        torch.testing.assert_close(p, (a.state_dict()[name] + b.state_dict()[name]) / 2)


def _one_line_naming(err: pytest.ExceptionInfo, path) -> str:
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def test_every_broken_checkpoint_is_a_one_line_error_naming_it(tmp_path):
    model = tiny_model()
    cases = {
        "truncated weights": lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:50]),
        "truncated optimizer": lambda p: (p / "optimizer.pt").write_bytes((p / "optimizer.pt").read_bytes()[:50]),
        "missing optimizer": lambda p: (p / "optimizer.pt").unlink(),
        "no state.json": lambda p: (p / "state.json").unlink(),
        "no hashes": lambda p: (p / "state.json").write_text(json.dumps({"format": "attnlab", "step": 1})),
        "bad file entry": lambda p: (p / "state.json").write_text(
            json.dumps({"format": "attnlab", "step": 1, "files": {"../x": "0", "model.safetensors": "0"}})),
        "binary state": lambda p: (p / "state.json").write_bytes(b"\xff\xfe\x00"),
    }
    expected = {"truncated weights": "model.safetensors does not match its sha256",
                "truncated optimizer": "optimizer.pt does not match its sha256",
                "missing optimizer": "incomplete: optimizer.pt missing", "no state.json": "incomplete: no state.json",
                "no hashes": "lists no sha256", "bad file entry": "bad file entry '../x'",
                "binary state": "state.json unreadable"}
    for i, (name, damage) in enumerate(cases.items()):
        path = save_checkpoint(tmp_path / str(i), 1, model, torch.optim.Adam(model.parameters()), None, {})
        damage(path)
        with pytest.raises(CheckpointError, match=expected[name]) as err:
            load_checkpoint(path, tiny_model(seed=1))
        _one_line_naming(err, path)


def test_foreign_and_mismatched_weights_are_one_line_errors(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))  # not safetensors at all
    with pytest.raises(CheckpointError, match="corrupt or not safetensors") as err:
        load_weights(tiny_model(), foreign)
    _one_line_naming(err, foreign)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"  # valid safetensors from some other model
    save_file({"encoder.weight": torch.zeros(3, 3)}, str(other))
    with pytest.raises(CheckpointError, match="do not fit the model config: missing") as err:
        load_weights(tiny_model(), other)
    _one_line_naming(err, other)
    save_weights(tiny_model(d_model=32, n_heads=4), tmp_path / "big.safetensors")
    with pytest.raises(CheckpointError, match="size mismatch") as err:
        load_weights(tiny_model(), tmp_path / "big.safetensors")
    _one_line_naming(err, tmp_path / "big.safetensors")


def _full_disk(*args, **kwargs):
    from safetensors import SafetensorError

    raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28) at path "x"')


def test_disk_full_in_safetensors_keeps_previous_checkpoint_and_weights(tmp_path, monkeypatch):
    import attnlab.training.checkpoint as ck

    model = tiny_model()
    save_checkpoint(tmp_path, 1, model, None, None, {})
    save_weights(model, tmp_path / "model.safetensors")
    before = (tmp_path / "model.safetensors").read_bytes()
    monkeypatch.setattr(ck, "st_save_model", _full_disk)  # what safetensors raises on ENOSPC
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(tmp_path, 2, model, None, None, {})
    assert str(err.value).endswith("No space left on device; the previous checkpoint step-0000001 is kept")
    with pytest.raises(CheckpointError) as err:
        save_weights(tiny_model(seed=4), tmp_path / "model.safetensors")
    assert str(err.value) == (f"could not write {tmp_path / 'model.safetensors'}: No space left on device; "
                              "the previous model.safetensors is kept")
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "model.safetensors"]  # no temp files
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["LATEST", "step-0000001"]


def test_unwritable_directory_even_as_root(tmp_path, monkeypatch):
    # chmod does not stop root; refuse the temporary directory the way a read-only directory would
    import attnlab.training.checkpoint as ck

    model = tiny_model()
    save_checkpoint(tmp_path, 1, model, None, None, {})

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ck.tempfile, "mkdtemp", denied)
    monkeypatch.setattr(ck.tempfile, "mkstemp", denied)
    with pytest.raises(CheckpointError, match="Permission denied; the previous checkpoint step-0000001 is kept"):
        save_checkpoint(tmp_path, 2, model, None, None, {})
    with pytest.raises(CheckpointError, match="could not write .*: Permission denied$"):
        save_weights(model, tmp_path / "model.safetensors")
    monkeypatch.undo()
    load_checkpoint(latest_checkpoint(tmp_path), tiny_model(seed=2))


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 128 KiB tmpfs: a real ENOSPC (needs root and mount; skipped otherwise)."""
    import subprocess

    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_real_disk_full_keeps_previous_checkpoint(tiny_tmpfs):
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 2, dtype=torch.long)).sum().backward()
    opt.step()
    save_checkpoint(tiny_tmpfs, 1, model, opt, None, {}, keep_last=0)
    for step in (2, 3):
        with pytest.raises(CheckpointError) as err:
            save_checkpoint(tiny_tmpfs, step, model, opt, None, {}, keep_last=0)
        assert str(err.value) == (f"could not save checkpoint step-000000{step} in {tiny_tmpfs / 'checkpoints'}: "
                                  "No space left on device; the previous checkpoint step-0000001 is kept")
    assert sorted(p.name for p in (tiny_tmpfs / "checkpoints").iterdir()) == ["LATEST", "step-0000001"]
    other = tiny_model(seed=3)
    load_checkpoint(latest_checkpoint(tiny_tmpfs), other, torch.optim.Adam(other.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


@pytest.mark.parametrize("keep_last", [0, 2])
def test_leftovers_of_a_kill_mid_save_are_removed_by_the_next_save(tmp_path, keep_last):
    model = tiny_model()
    save_checkpoint(tmp_path, 1, model, None, None, {}, keep_last=keep_last)
    (tmp_path / "checkpoints" / ".step-0000002.abc").mkdir()  # killed while writing checkpoint 2
    (tmp_path / "checkpoints" / ".step-0000002.abc" / "model.safetensors").write_bytes(b"half")
    (tmp_path / "checkpoints" / ".LATEST.x1.tmp").write_text("step-00")  # ... or while moving LATEST
    (tmp_path / ".model.safetensors.x2.tmp").write_bytes(b"half")  # ... or the best weights
    assert latest_checkpoint(tmp_path).name == "step-0000001"  # what --resume loads meanwhile
    save_checkpoint(tmp_path, 2, model, None, None, {}, keep_last=keep_last)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["LATEST", "step-0000001", "step-0000002"]
    assert not (tmp_path / ".model.safetensors.x2.tmp").exists()
