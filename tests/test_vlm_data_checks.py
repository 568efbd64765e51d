"""Training data checks: image paths stay inside --image_folder, empty or fully unusable data
stops training before any model loads, and `vitsplit-vlm check-data` finds every planted defect
with training's own checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_vlm_train import common, run_train

from vitsplit_vlm.cli import main
from vitsplit_vlm.playground.shapes import write_llava_dataset
from vitsplit_vlm.vlm.conversation import get_template
from vitsplit_vlm.vlm.data import (
    DEFAULT_IMAGE_TOKEN,
    BadSample,
    LazySupervisedDataset,
    summarize_skips,
)

VICUNA = get_template("vicuna_v1")
# skip reasons only the chat formats with markup give (`--version llama3 / qwen / chat_template`,
# where they exist); the broken set is vicuna_v1 data
CHAT_FORMAT_ONLY = {"marker_in_text", "template_mismatch"}
ASK = "<image>\nWhat colour is the circle?"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_llava_dataset(tmp_path_factory.mktemp("checks"), num_train=16, num_heldout=0)


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


def record(sample_id: str, image: str | None) -> dict:
    turns = [{"from": "human", "value": ASK}, {"from": "gpt", "value": "Red"}]
    return {"id": sample_id, "image": image, "conversations": turns}


def dataset(records, folder: Path, tokenizer, tiny, tmp_path: Path, **kwargs):
    from transformers import AutoImageProcessor

    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return LazySupervisedDataset(
        path,
        folder,
        tokenizer,
        AutoImageProcessor.from_pretrained(tiny.clip),
        VICUNA,
        model_max_length=2048,
        num_image_tokens=64,
        image_token_id=tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN),
        skip_log=tmp_path / "skipped.jsonl",
        **kwargs,
    )


# --------------------------------------------------------------------------- image paths


@pytest.fixture
def folders(data, tmp_path):
    """An image folder with the playground's first image, a secret image beside the folder, a
    link out of the folder and a link that stays inside."""
    folder = tmp_path / "images"
    folder.mkdir()
    sample = sorted(data.image_folder.glob("*.png"))[0]
    (folder / "ok.png").write_bytes(sample.read_bytes())
    (tmp_path / "secret.png").write_bytes(sample.read_bytes())
    os.symlink(tmp_path / "secret.png", folder / "link_out.png")
    os.symlink(folder / "ok.png", folder / "link_in.png")
    return folder


OUTSIDE = {"dotdot": "../secret.png", "absolute": None, "link_out": "link_out.png"}


@pytest.mark.parametrize("kind", sorted(OUTSIDE))
def test_image_paths_leaving_the_folder_are_skipped(kind, folders, tokenizer, tiny, tmp_path):
    """Defect: '../..' and absolute paths were opened and trained on."""
    name = OUTSIDE[kind] or str(folders.parent / "secret.png")
    ds = dataset([record("out", name), record("ok", "ok.png")], folders, tokenizer, tiny, tmp_path)
    with pytest.raises(BadSample) as err:
        ds.load(0)
    assert err.value.reason == "path_outside_folder" and err.value.sample_id == "out"
    assert ds[0]["id"] == "ok"  # skipped, the next sample in its place
    assert summarize_skips(tmp_path / "skipped.jsonl")["by_reason"] == {"path_outside_folder": 1}


def test_paths_inside_and_the_opt_in(folders, tokenizer, tiny, tmp_path):
    records = [record("link_in", "link_in.png"), record("abs", str(folders.parent / "secret.png"))]
    ds = dataset(records, folders, tokenizer, tiny, tmp_path)
    assert ds.load(0)["pixel_values"].shape[0] == 3  # a link that stays inside is fine
    allowed = dataset(records, folders, tokenizer, tiny, tmp_path, allow_images_outside_folder=True)
    assert allowed.load(1)["id"] == "abs"


def test_a_reader_without_template_checks_all_but_the_conversation(folders):
    """What training's pre-check uses for a template that needs the tokenizer to render."""
    from vitsplit_vlm.vlm.check_data import renders_alone
    from vitsplit_vlm.vlm.data import SampleReader

    assert renders_alone(VICUNA) and renders_alone(get_template("plain"))
    reader = SampleReader(folders, None)
    odd = {"id": "odd", "image": "ok.png", "conversations": [{"from": "bot", "value": "?"}]}
    assert reader.item(odd, "odd")["id"] == "odd"  # the conversation is not looked at
    with pytest.raises(BadSample, match="path_outside_folder"):
        reader.item({**odd, "image": "link_out.png"}, "odd")
    with pytest.raises(BadSample, match="corrupt_image"):
        (folders / "bad.png").write_bytes(b"\x89PNG\r\n")
        reader.item({**odd, "image": "bad.png"}, "odd")


# --------------------------------------------------------------------------- empty data


def test_empty_data_stops_before_any_model_loads(tiny, data, tmp_path):
    """Defect: an empty list exited 0 after 0 steps (loss nan) with an untrained model folder."""
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    out = tmp_path / "run"
    proc = run_train(*common(tiny, data, out, empty, steps=2), "--version", "vicuna_v1")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert f"--data_path {empty} holds no samples" in last
    assert not (out / "config.json").exists() and not (out / "train_summary.json").exists()


def test_fully_unusable_data_stops_before_any_model_loads(tiny, data, tmp_path):
    bad = [record("m1", "missing.png"), record("m2", "../../etc/passwd"), "not a record"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    proc = run_train(*common(tiny, data, tmp_path / "run", path, steps=2), "--version", "vicuna_v1")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "none of its 3 samples is usable" in last
    for found in ("missing_image (e.g. m1", "path_outside_folder (e.g. m2", "bad_format"):
        assert found in last
    assert "check-data" in last
    assert "Loading weights" not in proc.stderr  # stopped before the model


# --------------------------------------------------------------------------- check-data


@pytest.fixture(scope="module")
def broken(data, tiny, tmp_path_factory):
    from vitsplit_vlm.playground.broken_data import write_broken_dataset

    return write_broken_dataset(tmp_path_factory.mktemp("broken"), data, tiny.llama)


def check_data(capsys, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `vitsplit-vlm check-data ARGS`."""
    code = main(["check-data", *map(str, args), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_check_data_finds_every_planted_defect(broken, tiny, tmp_path, capsys):
    from vitsplit_vlm.vlm.data import SKIP_REASONS

    report = tmp_path / "report.json"
    fixed = tmp_path / "fixed.json"
    code, out, _ = check_data(
        capsys, "--data", broken.data, "--image-folder", broken.image_folder,
        "--model-path", broken.llm, "--vision-tower", tiny.clip, "--jobs", "2",
        "--report", report, "--fix", fixed,
    )  # fmt: skip
    found = json.loads(report.read_text())
    assert code == 1
    assert set(broken.planted) == set(SKIP_REASONS) - CHAT_FORMAT_ONLY  # every other kind planted
    assert found["ids"] == broken.planted
    assert found["usable"] == broken.good + len(broken.controls)
    for reason, ids in broken.planted.items():
        assert f"  {reason}: {len(ids)} [" in out and ids[0] in out
    usable = json.loads(fixed.read_text())
    assert [r["id"] for r in usable[-len(broken.controls):]] == broken.controls  # fmt: skip
    code, out, _ = check_data(
        capsys, "--data", fixed, "--image-folder", broken.image_folder,
        "--model-path", broken.llm, "--vision-tower", tiny.clip, "--jobs", "1",
    )  # fmt: skip
    assert code == 0 and f"{len(usable)} usable, 0 unusable" in out


def test_check_data_refuses_what_training_skips(broken, tiny, tmp_path, capsys):
    """Same code path: the dataset training reads refuses the same records for the same
    reasons (without a tokenizer check-data reports the reasons that need none)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    from vitsplit_vlm.vlm.builder import prepare_tokenizer

    tok = AutoTokenizer.from_pretrained(broken.llm)
    prepare_tokenizer(tok)
    ds = LazySupervisedDataset(
        broken.data, broken.image_folder, tok, AutoImageProcessor.from_pretrained(tiny.clip),
        VICUNA, model_max_length=2048, num_image_tokens=64,
        image_token_id=tok.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN),
    )  # fmt: skip
    refused = {}
    for index in range(len(ds)):
        try:
            ds.load(index)
        except BadSample as err:
            refused.setdefault(err.reason, []).append(err.sample_id)
    assert refused == broken.planted
    report = tmp_path / "report.json"
    code, _, _ = check_data(capsys, "--data", broken.data, "--image-folder", broken.image_folder,
                         "--report", report, "--jobs", "1")  # fmt: skip
    untokenized = json.loads(report.read_text())["ids"]
    assert code == 1
    assert untokenized == {
        r: ids
        for r, ids in broken.planted.items()
        if r not in ("too_long", "tokenization_mismatch")
    }


def test_check_data_jsonl_empty_and_bad_flags(data, tmp_path, capsys):
    records = json.loads(data.finetune.read_text())[:3]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text(
        "\n".join([json.dumps(records[0]), "{not json", *map(json.dumps, records[1:])])
    )
    fixed = tmp_path / "fixed.jsonl"
    code, out, _ = check_data(capsys, "--data", jsonl, "--image-folder", data.image_folder,
                           "--fix", fixed)  # fmt: skip
    assert code == 1 and "bad_format: 1 [#1]" in out and "line 2: malformed JSON" in out
    assert [json.loads(x)["id"] for x in fixed.read_text().splitlines()] == [
        r["id"] for r in records
    ]
    empty = tmp_path / "empty.json"
    empty.write_text("[ ]")
    code, out, _ = check_data(capsys, "--data", empty, "--image-folder", data.image_folder)
    assert code == 1 and "holds no samples" in out
    broken_list = tmp_path / "broken_list.json"
    broken_list.write_text(json.dumps(records)[:-30])
    code, _, err = check_data(capsys, "--data", broken_list, "--image-folder", data.image_folder)
    assert code == 1 and "malformed JSON" in err
    code, _, err = check_data(capsys, "--data", jsonl, "--image-folder", tmp_path / "nope")
    assert code == 2 and "--image-folder" in err


def test_check_data_binds_the_llms_own_chat_template(data, tiny, tiny_llm, tmp_path, capsys):
    """``--version chat_template --model-path LLM``: check-data renders with the tokenizer's own
    Jinja (Qwen3's real tokenizer) as training does, and measures lengths with it."""
    llm = tiny_llm("qwen3")
    args = ["--data", data.finetune, "--image-folder", data.image_folder, "--version", "chat_template",
            "--model-path", llm, "--vision-tower", tiny.clip, "--jobs", "1"]  # fmt: skip
    code, out, err = check_data(capsys, *args)
    assert code == 0, out + err
    code, out, _ = check_data(capsys, *args, "--model-max-length", "16")
    assert code == 1 and "too_long" in out
