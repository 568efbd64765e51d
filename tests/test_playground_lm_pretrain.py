"""The tiny Vicuna's pretraining text and batches (`playground.lm_pretrain`)."""

from __future__ import annotations

import re

import torch

from vitsplit_vlm.playground.lm_pretrain import _packed_batches, chat_corpus

EOS = 0


def test_packed_rows_hold_whole_documents_and_mask_padding():
    docs = [[d] * n for d, n in zip(range(1, 40), [3, 9, 1, 14, 6, 2, 11, 5] * 5, strict=False)]
    batches = _packed_batches(docs, EOS, seq_len=16, batch_size=4, seed=0)
    seen = set()
    for _ in range(6):
        ids, labels = next(batches)
        assert ids.shape == labels.shape == (4, 16)
        for row_ids, row_labels in zip(ids.tolist(), labels.tolist(), strict=True):
            used = sum(1 for x in row_labels if x != -100)
            assert row_labels[:used] == row_ids[:used]  # every real token is supervised
            assert set(row_labels[used:]) <= {-100}  # padding is not
            # the used part is whole documents, each followed by EOS
            runs = re.findall(r"(\d+)(?:,\1)*,0", ",".join(map(str, row_ids[:used])))
            for doc in runs:
                seen.add(int(doc))
            rebuilt = [t for d in runs for t in docs[int(d) - 1] + [EOS]]
            assert rebuilt == row_ids[:used]
    assert len(seen) > 20


def test_packed_batches_cut_only_documents_longer_than_a_row():
    ids, labels = next(_packed_batches([[5] * 40, [6] * 3], EOS, seq_len=8, batch_size=2, seed=0))
    rows = ids.tolist()
    assert [5] * 8 in rows  # the long document, cut to the row
    assert [6, 6, 6, EOS, EOS, EOS, EOS, EOS] in rows  # the short one, padded
    assert torch.equal(labels[ids == 6], ids[ids == 6])


def test_reading_conversations_answer_from_their_description():
    """Every reading conversation opens with the scene's description, and its colour / shape
    answers are the ones that description implies."""
    reading = [t for t in chat_corpus(40, seed=0) if re.search(r"USER: [^\n]*\.\n", t)]
    assert len(reading) >= 40
    checked = 0
    for text in reading:
        description = re.search(r"USER: ([^\n]*)\n", text).group(1)
        objects = re.findall(r"an? (\w+) (circle|square|triangle|cross)", description)
        for shape, answer in re.findall(
            r"What colour is the (\w+)\?.*?ASSISTANT: (\w+)", text, re.S
        ):
            assert (answer.lower(), shape) in objects, (description, shape, answer)
            checked += 1
        for colour, answer in re.findall(
            r"What shape is the (\w+) object\?.*?ASSISTANT: (\w+)", text, re.S
        ):
            assert (colour, answer.lower()) in objects, (description, colour, answer)
            checked += 1
    assert checked >= 40
