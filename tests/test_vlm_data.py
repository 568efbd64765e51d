"""LLaVA data: exact label masks, image-token expansion, bad samples, collator, samplers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitsplit_vlm.playground.shapes import write_llava_dataset
from vitsplit_vlm.vlm.conversation import get_template, render_prompt
from vitsplit_vlm.vlm.data import (
    DEFAULT_IMAGE_TOKEN,
    IGNORE_INDEX,
    BadSample,
    DataCollator,
    LazySupervisedDataset,
    background_color,
    expand2square,
    load_records,
    summarize_skips,
    tokenize_conversation,
    tokenize_prompt,
)
from vitsplit_vlm.vlm.sampler import (
    LengthGroupedSampler,
    modality_length_grouped_indices,
    split_to_even_chunks,
)

N_IMG = 64  # 112 px / patch 14 -> 8 x 8 patch tokens
VICUNA = get_template("vicuna_v1")
PLAIN = get_template("plain")


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


@pytest.fixture(scope="module")
def image_token_id(tokenizer):
    return tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)


@pytest.fixture(scope="module")
def image_processor(tiny):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(tiny.clip)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_llava_dataset(tmp_path_factory.mktemp("shapes"), num_train=40, num_heldout=0)


def _tokenize(conv, tokenizer, template=VICUNA, max_length=2048, num_images=None):
    image_id = tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)
    return tokenize_conversation(
        conv,
        tokenizer,
        template,
        num_image_tokens=N_IMG,
        image_token_id=image_id,
        max_length=max_length,
        num_images=num_images,
        sample_id="s0",
    )


def _supervised_runs(sample) -> list[list[int]]:
    """Token ids of each maximal run of supervised positions."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(sample.input_ids.tolist(), sample.labels.tolist(), strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = label != IGNORE_INDEX
    return runs


def _dataset(records, tmp_path, tokenizer, image_processor, **kwargs):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    kwargs.setdefault("model_max_length", 2048)
    return LazySupervisedDataset(
        path,
        tmp_path,
        tokenizer,
        image_processor,
        kwargs.pop("template", VICUNA),
        num_image_tokens=N_IMG,
        image_token_id=tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN),
        **kwargs,
    )


def _conv(*turns: str) -> list[dict[str, str]]:
    return [{"from": "human" if j % 2 == 0 else "gpt", "value": t} for j, t in enumerate(turns)]


# --------------------------------------------------------------------------- label masks


def test_vicuna_v1_supervised_tokens_decode_to_the_replies(shapes, tokenizer, image_token_id):
    samples = json.loads(shapes.finetune.read_text())
    assert any("image" not in s for s in samples) and len(samples) > 40
    for record in samples:
        sample = _tokenize(record["conversations"], tokenizer, num_images=int("image" in record))
        replies = [t["value"] for t in record["conversations"][1::2]]
        runs = _supervised_runs(sample)
        decoded = [tokenizer.decode(run, skip_special_tokens=False) for run in runs]
        assert decoded == [reply + "</s>" for reply in replies], record["id"]
        assert all(run[-1] == tokenizer.eos_token_id for run in runs)
        assert sample.input_ids[0] == tokenizer.bos_token_id
        assert int((sample.input_ids == image_token_id).sum()) == N_IMG * sample.num_images


def test_plain_supervises_exactly_caption_and_newline(shapes, tokenizer, image_token_id):
    for record in json.loads(shapes.pretrain.read_text())[:10]:
        sample = _tokenize(record["conversations"], tokenizer, PLAIN, num_images=1)
        ids, labels = sample.input_ids, sample.labels
        assert ids[0] == tokenizer.bos_token_id
        assert torch.equal(ids[1 : 1 + N_IMG], torch.full((N_IMG,), image_token_id))
        assert (labels[: 1 + N_IMG] == IGNORE_INDEX).all()
        assert torch.equal(labels[1 + N_IMG :], ids[1 + N_IMG :])
        caption = record["conversations"][1]["value"]
        assert tokenizer.decode(ids[1 + N_IMG :]) == caption + "\n"


def test_image_tokens_expand_in_place_with_ignored_labels(tokenizer, image_token_id):
    conv = _conv("What colour is the circle? <image>", "Red")
    sample = _tokenize(conv, tokenizer, num_images=1)
    positions = (sample.input_ids == image_token_id).nonzero().flatten()
    assert positions.tolist() == list(range(int(positions[0]), int(positions[0]) + N_IMG))
    assert (sample.labels[positions] == IGNORE_INDEX).all()
    before = tokenizer.decode(sample.input_ids[: positions[0]], skip_special_tokens=True)
    after = tokenizer.decode(sample.input_ids[positions[-1] + 1 :])
    assert before.endswith("questions. USER: ")  # "▁" before the image, as LLaVA
    assert after == "\nWhat colour is the circle? ASSISTANT: Red</s>"
    assert sample.num_images == 1


def test_training_ids_start_with_the_prompt_ids_of_hf_llava_processor(
    tokenizer, image_processor, image_token_id
):
    """The prompt eval renders is tokenized exactly like the training text and like HF's
    LlavaProcessor (which expands <image> in the text before tokenizing)."""
    from transformers import LlavaProcessor

    conv = _conv("<image>\nWhat shape is the red object?", "Circle", "How many?", "2")
    sample = _tokenize(conv, tokenizer, num_images=1)
    messages = [
        (VICUNA.user, conv[0]["value"]),
        (VICUNA.assistant, "Circle"),
        (VICUNA.user, "How many?"),
    ]
    prompt = render_prompt(VICUNA, messages)
    ids = tokenize_prompt(prompt, tokenizer, num_image_tokens=N_IMG, image_token_id=image_token_id)
    assert torch.equal(sample.input_ids[: len(ids)], ids)
    assert sample.labels[len(ids)] != IGNORE_INDEX and sample.labels[len(ids) - 1] == IGNORE_INDEX
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        image_token=DEFAULT_IMAGE_TOKEN,
    )
    hf = processor(images=Image.new("RGB", (112, 112)), text=prompt, return_tensors="pt")
    assert torch.equal(hf["input_ids"][0], ids)


def test_truncation_keeps_a_supervised_prefix(tokenizer):
    conv = _conv("<image>\nDescribe it.", " ".join(["red circle"] * 100))
    full = _tokenize(conv, tokenizer, num_images=1)
    cut = _tokenize(conv, tokenizer, max_length=150, num_images=1)
    assert len(full.input_ids) > 150 and len(cut.input_ids) == 150
    assert torch.equal(cut.input_ids, full.input_ids[:150])
    assert torch.equal(cut.labels, full.labels[:150])
    assert (cut.labels != IGNORE_INDEX).sum() > 0


@pytest.mark.parametrize("max_length", [60, 116])
def test_truncation_into_image_or_before_the_reply_is_too_long(tokenizer, max_length):
    # the image tokens sit at ~35..99; the reply starts after ~116 tokens
    conv = _conv("<image>\n" + " ".join(["What colour is it?"] * 4), "Red")
    with pytest.raises(BadSample) as info:
        _tokenize(conv, tokenizer, max_length=max_length, num_images=1)
    assert info.value.reason == "too_long" and info.value.sample_id == "s0"


def test_a_token_straddling_a_reply_boundary_is_a_mismatch(tiny):
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny.llama)
    tok.add_special_tokens({"additional_special_tokens": [DEFAULT_IMAGE_TOKEN]})
    tok.add_tokens([AddedToken(": ", normalized=False)])  # ":" is prompt, " " is reply
    with pytest.raises(BadSample, match="straddles") as info:
        _tokenize(_conv("Hi", "Hello"), tok)
    assert info.value.reason == "tokenization_mismatch"


def test_a_tokenizer_without_the_image_token_is_a_setup_error(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny.llama)
    with pytest.raises(ValueError, match=r"add_tokens\(\['<image>'\]"):
        tokenize_conversation(
            _conv("<image>\nHi", "Hello"),
            tok,
            VICUNA,
            num_image_tokens=N_IMG,
            image_token_id=len(tok),
            max_length=2048,
        )


@pytest.mark.parametrize(
    "conv, num_images, reason",
    [
        (_conv("Hi", "Hello"), 1, "image_count"),
        (_conv("<image> <image>\nHi", "Hello"), 1, "image_count"),
        (_conv("<image>\nHi", "Hello"), 0, "image_count"),
        (_conv("<image>\nHi"), 1, "no_assistant_turn"),
        (_conv("<image>\nHi", ""), 1, "empty_turn"),
        (_conv("<image>", "x") + [{"from": "gpt", "value": "y"}], 1, "bad_roles"),
        ([{"from": "human", "value": "<image>"}, {"from": "bot", "value": "x"}], 1, "bad_roles"),
        ([{"from": "human", "value": 3}], 0, "bad_format"),
    ],
)
def test_unusable_conversations_raise_bad_sample(tokenizer, conv, num_images, reason):
    with pytest.raises(BadSample, match="'s0'") as info:
        _tokenize(conv, tokenizer, num_images=num_images)
    assert info.value.reason == reason


def test_leading_reply_and_unanswered_question_are_dropped_as_llava(tokenizer):
    conv = [{"from": "gpt", "value": "Hi!"}, *_conv("<image>\nWhat?", "Red", "And?")]
    sample = _tokenize(conv, tokenizer, num_images=1)
    text = tokenizer.decode(sample.input_ids[sample.input_ids != sample.input_ids[40]])
    assert "Hi!" not in text and "And?" not in text
    assert [tokenizer.decode(r) for r in _supervised_runs(sample)] == ["Red</s>"]


# --------------------------------------------------------------------------- dataset


def test_shapes_finetune_items_and_lengths(shapes, tokenizer, image_processor, tmp_path):
    skip_log = tmp_path / "skips.jsonl"
    ds = LazySupervisedDataset(
        shapes.finetune,
        shapes.image_folder,
        tokenizer,
        image_processor,
        VICUNA,
        model_max_length=2048,
        num_image_tokens=N_IMG,
        image_token_id=tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN),
        skip_log=skip_log,
    )
    records = json.loads(shapes.finetune.read_text())
    items = [ds[i] for i in range(len(ds))]
    assert [item["id"] for item in items] == [r["id"] for r in records]
    for record, item, modality in zip(records, items, ds.modality_lengths, strict=True):
        if "image" in record:
            assert item["pixel_values"].shape == (3, 112, 112) and modality > 0
        else:
            assert "pixel_values" not in item and modality < 0
            assert (item["input_ids"] != ds.image_token_id).all()
    assert not skip_log.exists()
    assert summarize_skips(skip_log)["total"] == 0


def test_lengths_are_word_counts_plus_image_tokens(tmp_path, tokenizer, image_processor):
    records = [
        {"id": "a", "image": "a.png", "conversations": _conv("<image>\nWhat is it?", "A cat.")},
        {"id": "b", "conversations": _conv("Hi there", "Hello")},
        {"id": "c", "conversations": _conv(" ", " ")},
    ]
    ds = _dataset(records, tmp_path, tokenizer, image_processor)
    assert ds.lengths == [4 + 2 + N_IMG, 3, 1]
    assert ds.modality_lengths == [4 + 2 + N_IMG, -3, -1]


def _write_image(path: Path, size=(112, 112), colour=(255, 0, 0)) -> str:
    Image.new("RGB", size, colour).save(path)
    return path.name


BAD_KINDS = ["missing_image", "corrupt_image", "image_count", "no_assistant_turn", "too_long"]


def _bad_record(kind: str, tmp_path: Path) -> dict:
    good_image = _write_image(tmp_path / "ok.png")
    if kind == "missing_image":
        return {"id": "bad", "image": "nope.png", "conversations": _conv("<image>\nQ", "A")}
    if kind == "corrupt_image":
        (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
        return {"id": "bad", "image": "corrupt.png", "conversations": _conv("<image>\nQ", "A")}
    if kind == "image_count":
        return {"id": "bad", "image": good_image, "conversations": _conv("Q", "A")}
    if kind == "no_assistant_turn":
        return {"id": "bad", "image": good_image, "conversations": _conv("<image>\nQ")}
    question = "<image>\n" + " ".join(["What colour is it?"] * 100)
    return {"id": "bad", "image": good_image, "conversations": _conv(question, "A")}


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_sample_is_skipped_logged_and_summarised(
    kind, tmp_path, tokenizer, image_processor, caplog
):
    records = [_bad_record(kind, tmp_path), {"id": "good", "conversations": _conv("Hi", "Hello")}]
    skip_log = tmp_path / "logs" / "skips.jsonl"
    ds = _dataset(
        records, tmp_path, tokenizer, image_processor, skip_log=skip_log, model_max_length=300
    )
    with caplog.at_level(logging.WARNING, logger="vitsplit_vlm.vlm.data"):
        item = ds[0]
    assert item["id"] == "good"
    assert "'bad'" in caplog.text and kind in caplog.text
    (line,) = skip_log.read_text().splitlines()
    entry = json.loads(line)
    assert (entry["id"], entry["reason"], entry["index"]) == ("bad", kind, 0)
    assert ds[0]["id"] == "good"  # a known bad sample is not retried or logged again
    assert len(skip_log.read_text().splitlines()) == 1
    summary = summarize_skips(skip_log)
    assert summary["total"] == 1 and summary["by_reason"] == {kind: 1}
    assert summary["ids"] == {kind: ["bad"]}


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_sample_fails_fast_naming_id_and_file(kind, tmp_path, tokenizer, image_processor):
    records = [_bad_record(kind, tmp_path), {"id": "good", "conversations": _conv("Hi", "Hello")}]
    ds = _dataset(
        records, tmp_path, tokenizer, image_processor, fail_fast=True, model_max_length=300
    )
    with pytest.raises(BadSample, match=r"sample 'bad' in .*data\.json: " + kind) as info:
        ds[0]
    assert info.value.reason == kind and info.value.sample_id == "bad"
    if kind.endswith("_image"):
        assert records[0]["image"] in str(info.value)


def test_skips_wrap_around_and_an_all_bad_dataset_raises(tmp_path, tokenizer, image_processor):
    good = {"id": "good", "conversations": _conv("Hi", "Hello")}
    bad = {"id": "bad", "image": "nope.png", "conversations": _conv("<image>\nQ", "A")}
    ds = _dataset([good, bad], tmp_path, tokenizer, image_processor)
    assert ds[1]["id"] == "good"
    ds = _dataset([bad, {**bad, "id": "bad2"}], tmp_path, tokenizer, image_processor)
    with pytest.raises(RuntimeError, match="data.json: every one of the 2 samples"):
        ds[0]


def test_skip_log_collects_lines_from_dataloader_workers(tmp_path, tokenizer, image_processor):
    records = [_bad_record(kind, tmp_path) | {"id": f"bad_{kind}"} for kind in BAD_KINDS]
    records += [{"id": f"ok{j}", "conversations": _conv("Hi", "Hello")} for j in range(5)]
    skip_log = tmp_path / "skips.jsonl"
    ds = _dataset(
        records, tmp_path, tokenizer, image_processor, skip_log=skip_log, model_max_length=300
    )
    loader = torch.utils.data.DataLoader(
        ds, batch_size=2, num_workers=2, collate_fn=lambda items: [x["id"] for x in items]
    )
    ids = [i for batch in loader for i in batch]
    assert len(ids) == len(records) and set(ids) == {f"ok{j}" for j in range(5)}
    summary = summarize_skips(skip_log)
    assert summary["by_reason"] == {kind: 1 for kind in sorted(BAD_KINDS)}
    assert summary["total"] == 5 and summary["events"] >= 5


def test_malformed_json_names_the_file(tmp_path, tokenizer, image_processor):
    bad = tmp_path / "broken.json"
    bad.write_text('[{"id": "a", "conversations": []},\n {"id": ')
    with pytest.raises(ValueError, match=r"broken\.json: malformed JSON .*line 2"):
        LazySupervisedDataset(
            bad, tmp_path, tokenizer, image_processor, VICUNA,
            model_max_length=64, num_image_tokens=N_IMG, image_token_id=0,
        )  # fmt: skip
    lines = tmp_path / "data.jsonl"
    lines.write_text('{"id": "a"}\n\n{"id": "b"}\n{"id": \n')
    with pytest.raises(ValueError, match=r"data\.jsonl:4: malformed JSON line"):
        load_records(lines)
    lines.write_text('{"id": "a"}\n\n{"id": "b"}\n')
    assert load_records(lines) == [{"id": "a"}, {"id": "b"}]
    (tmp_path / "dict.json").write_text('{"id": "a"}')
    with pytest.raises(ValueError, match=r"dict\.json: expected a JSON list"):
        load_records(tmp_path / "dict.json")


# --------------------------------------------------------------------------- images


def test_expand2square_keeps_aspect_and_fills_with_the_mean_colour(image_processor):
    background = background_color(image_processor)
    assert background == (122, 116, 104)
    wide = expand2square(Image.new("RGB", (30, 10), (255, 0, 0)), background)
    pixels = torch.from_numpy(np.array(wide)).long()
    assert wide.size == (30, 30)
    assert (pixels[10:20] == torch.tensor([255, 0, 0])).all()
    assert (pixels[:10] == torch.tensor(background)).all()
    assert (pixels[20:] == torch.tensor(background)).all()
    tall = expand2square(Image.new("RGB", (5, 9), (0, 255, 0)), background)
    pixels = torch.from_numpy(np.array(tall)).long()
    assert (pixels[:, 2:7] == torch.tensor([0, 255, 0])).all()
    assert (pixels[:, :2] == torch.tensor(background)).all()
    square = Image.new("RGB", (4, 4))
    assert expand2square(square, background) is square


def test_pad_mode_pads_a_wide_image_with_the_mean(tmp_path, tokenizer, image_processor):
    name = _write_image(tmp_path / "wide.png", size=(224, 112))
    records = [{"id": "w", "image": name, "conversations": _conv("<image>\nQ", "A")}]
    padded = _dataset(records, tmp_path, tokenizer, image_processor)[0]["pixel_values"]
    cropped = _dataset(records, tmp_path, tokenizer, image_processor, image_aspect_ratio="square")[
        0
    ]["pixel_values"]
    assert padded.shape == cropped.shape == (3, 112, 112)
    # pad: the top and bottom quarters are the mean colour, ~0 after normalisation
    assert padded[:, :26].abs().max() < 0.02 and padded[:, -26:].abs().max() < 0.02
    assert padded[0, 56, 56] > 1.5  # red in the middle
    assert cropped[0].min() > 1.5  # square: resize + centre crop, all red
    with pytest.raises(ValueError, match="image_aspect_ratio"):
        _dataset(records, tmp_path, tokenizer, image_processor, image_aspect_ratio="anyres")


# --------------------------------------------------------------------------- collator


def test_collator_pads_and_stacks_only_image_samples(tokenizer):
    pixels = [torch.full((3, 4, 4), float(k)) for k in range(2)]
    items = [
        {"input_ids": torch.tensor([1, 5, 6]), "labels": torch.tensor([-100, 5, 6]), "id": "t"},
        {
            "input_ids": torch.tensor([1, 7]),
            "labels": torch.tensor([-100, 7]),
            "pixel_values": pixels[0],
        },
        {"input_ids": torch.tensor([1, 0, 0, 9]), "labels": torch.tensor([-100, -100, 0, 9])},
        {"input_ids": torch.tensor([1]), "labels": torch.tensor([-100]), "pixel_values": pixels[1]},
    ]
    collate = DataCollator(pad_token_id=tokenizer.pad_token_id, model_max_length=8)
    batch = collate(items)
    assert sorted(batch) == ["attention_mask", "input_ids", "labels", "pixel_values"]
    assert batch["input_ids"].tolist() == [[1, 5, 6, 0], [1, 7, 0, 0], [1, 0, 0, 9], [1, 0, 0, 0]]
    assert batch["labels"].tolist() == [
        [-100, 5, 6, -100],
        [-100, 7, -100, -100],
        [-100, -100, 0, 9],
        [-100, -100, -100, -100],
    ]
    # pad id 0 (= unk) inside row 2 stays attended
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 1],
        [1, 0, 0, 0],
    ]
    assert torch.equal(batch["pixel_values"], torch.stack(pixels))
    assert "pixel_values" not in collate([items[0], items[2]])
    with pytest.raises(ValueError, match="model_max_length 3"):
        DataCollator(pad_token_id=0, model_max_length=3)(items)
    with pytest.raises(ValueError, match="pad token"):
        DataCollator(pad_token_id=None, model_max_length=3)


def test_collator_on_dataset_items(shapes, tokenizer, image_processor):
    ds = LazySupervisedDataset(
        shapes.finetune, shapes.image_folder, tokenizer, image_processor, VICUNA,
        model_max_length=2048, num_image_tokens=N_IMG,
        image_token_id=tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN),
    )  # fmt: skip
    text_only = next(i for i in range(len(ds)) if ds.modality_lengths[i] < 0)
    items = [ds[0], ds[text_only], ds[1]]
    batch = DataCollator(pad_token_id=tokenizer.pad_token_id, model_max_length=2048)(items)
    n_img = sum("pixel_values" in x for x in items)
    assert batch["pixel_values"].shape == (n_img, 3, 112, 112)
    assert int((batch["input_ids"] == ds.image_token_id).sum()) == n_img * N_IMG
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"].sum(1).tolist() == [len(x["input_ids"]) for x in items]


# --------------------------------------------------------------------------- samplers


def test_split_to_even_chunks_balances_total_length():
    assert split_to_even_chunks([0, 1, 2, 3], [10, 8, 3, 1], 2) == [[0, 3], [1, 2]]
    assert split_to_even_chunks([0, 1, 2], [5, 4, 3], 2) == [[0, 2], [1]]


def test_modality_grouping_is_a_grouped_permutation():
    # 10 image samples (> 0) and 7 text-only (< 0); megabatch = 2 * 2 = 4
    lengths = [5, 80, 30, 12, 60, 7, 44, 9, 21, 3] + [-4, -9, -2, -30, -15, -6, -11]
    order = modality_length_grouped_indices(lengths, 2, 2, torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(17))
    # 2 full image megabatches + 1 full text megabatch, the mixed remainder (2 + 3) split as
    # one full megabatch first and a single index last
    first, middle, last = order[:4], order[4:16], order[16:]
    assert sum(lengths[i] > 0 for i in first) == 2 and len(last) == 1
    for k in range(0, 12, 4):
        group = middle[k : k + 4]
        assert len({lengths[i] > 0 for i in group}) == 1, group
        for batch in (group[:2], group[2:]):  # each of the 2 ranks: longest first
            assert abs(lengths[batch[0]]) >= abs(lengths[batch[1]])
        longest = max(group, key=lambda i: abs(lengths[i]))
        assert longest in (group[0], group[2])


def test_sampler_is_deterministic_per_seed_and_epoch():
    lengths = [(-1) ** i * (i + 1) for i in range(50)]
    sampler = LengthGroupedSampler(lengths, batch_size=4, world_size=2, group_by_modality=True)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and len(sampler) == 50
    assert (
        list(LengthGroupedSampler(lengths, batch_size=4, world_size=2, group_by_modality=True))
        == first
    )
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == list(range(50))
    plain = LengthGroupedSampler([abs(n) for n in lengths], batch_size=4, world_size=2, seed=3)
    order = list(plain)
    assert sorted(order) == list(range(50))
    for k in range(0, 48, 8):  # each megabatch of 8 holds its 8 indices, 2 batches of 4
        group = order[k : k + 8]
        assert all(
            abs(lengths[a]) >= abs(lengths[b]) for a, b in zip(group[:3], group[1:4], strict=True)
        )


def test_single_modality_and_zero_lengths():
    only_images = [3, 1, 2, 5]
    order = list(LengthGroupedSampler(only_images, batch_size=2, group_by_modality=True))
    assert sorted(order) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="non-zero"):
        list(LengthGroupedSampler([3, 0, -2], batch_size=2, group_by_modality=True))
