"""Save and load: exact round trips, atomic writes, and every way a checkpoint can be bad."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_models as T
import torch

import petl
from petl.core.io import CONFIG_NAME, WEIGHTS_NAME
from petl.core.wrapping import is_wrapped
from petl.errors import AlreadyWrappedError, CheckpointError, NotWrappedError


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    model = petl.wrap(T.build("bert", "seq-cls"), "lora", r=2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05)
    petl.save(model, tmp_path / "adapter")
    return tmp_path / "adapter", T.logits(model, T.inputs("bert", "seq-cls"))


def _untouched(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return not is_wrapped(model) and set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


def _fresh() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    model = T.build("bert", "seq-cls")
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def test_round_trip_is_exact_and_needs_no_options(saved) -> None:
    folder, logits = saved
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", WEIGHTS_NAME, CONFIG_NAME]
    description = json.loads((folder / CONFIG_NAME).read_text())
    assert description["strategy"] == "lora" and description["config"]["r"] == 2
    assert description["model"]["class"] == "BertForSequenceClassification"
    model = petl.load(T.build("bert", "seq-cls"), folder)
    torch.testing.assert_close(T.logits(model, T.inputs("bert", "seq-cls")), logits, atol=0, rtol=0)


def test_save_leaves_no_temporary_files_and_replaces_old_ones(saved) -> None:
    folder, _ = saved
    model = petl.wrap(T.build("bert", "seq-cls"), "lora", r=4)
    petl.save(model, folder)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert json.loads((folder / CONFIG_NAME).read_text())["config"]["r"] == 4


def test_interrupted_save_keeps_the_previous_adapter(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, logits = saved
    before = (folder / WEIGHTS_NAME).read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("petl.core.io.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        petl.save(petl.wrap(T.build("bert", "seq-cls"), "lora", r=2), folder)
    assert (folder / WEIGHTS_NAME).read_bytes() == before
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_missing_folder(tmp_path: Path) -> None:
    model, before = _fresh()
    with pytest.raises(CheckpointError, match="No adapter folder"):
        petl.load(model, tmp_path / "nowhere")
    assert _untouched(model, before)


@pytest.mark.parametrize("name", [WEIGHTS_NAME, CONFIG_NAME])
def test_missing_file(saved, name: str) -> None:
    folder, _ = saved
    (folder / name).unlink()
    if name == CONFIG_NAME:  # else peft's adapter_config.json makes it a peft folder, which loads
        (folder / "adapter_config.json").unlink()
    model, before = _fresh()
    with pytest.raises(CheckpointError, match=name):
        petl.load(model, folder)
    assert _untouched(model, before)


def test_truncated_weights(saved) -> None:
    folder, _ = saved
    data = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    model, before = _fresh()
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        petl.load(model, folder)
    assert _untouched(model, before)


def test_garbage_weights(saved) -> None:
    folder, _ = saved
    (folder / WEIGHTS_NAME).write_bytes(b"\x80\x04not a safetensors file")
    model, before = _fresh()
    with pytest.raises(CheckpointError):
        petl.load(model, folder)
    assert _untouched(model, before)


@pytest.mark.parametrize("text", ["{not json", '{"strategy": "lora"}', "[]"])
def test_corrupted_description(saved, text: str) -> None:
    folder, _ = saved
    (folder / CONFIG_NAME).write_text(text)
    model, before = _fresh()
    with pytest.raises(CheckpointError, match="corrupted"):
        petl.load(model, folder)
    assert _untouched(model, before)


def test_unknown_option_in_description(saved) -> None:
    folder, _ = saved
    description = json.loads((folder / CONFIG_NAME).read_text())
    description["config"]["rank"] = 3
    (folder / CONFIG_NAME).write_text(json.dumps(description))
    model, before = _fresh()
    with pytest.raises(petl.PetlError, match="'rank' is not an option"):
        petl.load(model, folder)
    assert _untouched(model, before)


def test_other_architecture_is_refused(saved) -> None:
    folder, _ = saved
    model = T.build("gpt2", "seq-cls")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="trained on a BertForSequenceClassification"):
        petl.load(model, folder)
    assert _untouched(model, before)


def test_other_shape_is_refused_and_model_left_as_it_was(saved) -> None:
    folder, _ = saved
    description = json.loads((folder / CONFIG_NAME).read_text())
    description["model"]["hidden_size"] = None  # force the tensor check rather than the signature check
    (folder / CONFIG_NAME).write_text(json.dumps(description))
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
                        vocab_size=T.VOCAB, num_labels=T.NUM_LABELS)
    model = BertForSequenceClassification(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    with pytest.raises(CheckpointError, match="shape mismatches"):
        petl.load(model, folder)
    assert _untouched(model, before)
    assert [type(m) for m in model.modules()] == classes


def test_tampered_tensor_names_are_refused(saved) -> None:
    from safetensors.torch import load_file, save_file

    folder, _ = saved
    tensors = load_file(folder / WEIGHTS_NAME)
    key = next(k for k in tensors if "lora_A" in k)
    tensors[key.replace("lora_A", "lora_Z")] = tensors.pop(key)
    save_file(tensors, folder / WEIGHTS_NAME)
    model, before = _fresh()
    with pytest.raises(CheckpointError, match="missing from the file"):
        petl.load(model, folder)
    assert _untouched(model, before)


def test_loading_onto_a_wrapped_model_is_refused(saved) -> None:
    folder, _ = saved
    model = petl.wrap(T.build("bert", "seq-cls"), "lora", r=2)
    with pytest.raises(AlreadyWrappedError):
        petl.load(model, folder)


def test_saving_a_plain_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotWrappedError, match="petl.wrap"):
        petl.save(T.build("bert", "seq-cls"), tmp_path)


def test_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(petl.PetlError, match="Cannot create"):
        petl.save(petl.wrap(T.build("bert", "seq-cls"), "lora"), blocker / "adapter")


def test_saved_files_get_ordinary_permissions(saved) -> None:
    import os

    folder, _ = saved
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
