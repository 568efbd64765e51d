"""`--supervised_logits_only`: the LM head only where the next token is supervised, same loss."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from vitsplit_vlm.vlm.arguments import TrainingArguments
from vitsplit_vlm.vlm.data import IGNORE_INDEX
from vitsplit_vlm.vlm.trainer import VLMTrainer, supervised_positions


def test_supervised_positions_are_those_before_each_supervised_token():
    x = IGNORE_INDEX
    labels = torch.tensor([[x, x, 5, 6, x], [x, 7, x, x, 9]])
    keep, shift_labels = supervised_positions(labels)
    assert keep.tolist() == [[0, 1, 1, 0, 0], [1, 0, 0, 1, 0]]
    assert shift_labels.tolist() == [5, 6, 7, 9]  # row-major, as the kept logits are flattened


def _batch(vlm_dir):
    """Two samples of different lengths (right-padded), the answer half of each supervised."""
    processor = AutoProcessor.from_pretrained(vlm_dir)
    texts = []
    for question in ("What colour is the circle?", "How many shapes are there in this picture?"):
        msgs = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]
        texts.append(processor.apply_chat_template(msgs, add_generation_prompt=True) + " red two")
    images = [Image.new("RGB", (112, 112), c) for c in ((255, 0, 0), (0, 90, 200))]
    processor.tokenizer.padding_side = "right"
    batch = dict(processor(images=images, text=texts, padding=True, return_tensors="pt"))
    labels = batch["input_ids"].clone()
    for row, n in enumerate(batch["attention_mask"].sum(1).tolist()):
        labels[row, : n - 4] = IGNORE_INDEX  # the prompt and the image tokens
        labels[row, n:] = IGNORE_INDEX  # padding
    batch["labels"] = labels
    return batch


def _loss_and_grads(vlm_dir, tmp_path, batch, on: bool, smoothing: float = 0.0, **kwargs):
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(vlm_dir).train()
    args = TrainingArguments(
        output_dir=str(tmp_path / str(on)),
        report_to="none",
        supervised_logits_only=on,
        label_smoothing_factor=smoothing,
    )
    trainer = VLMTrainer(model=model, args=args)
    loss, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True, **kwargs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), outputs.logits.shape, grads


@pytest.mark.parametrize("num_items", [None, 11])  # 11: a gradient-accumulation denominator
def test_loss_and_gradients_equal_those_over_all_logits(vlm_dir, tmp_path, num_items):
    batch = _batch(vlm_dir)
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    full_loss, full_shape, full_grads = _loss_and_grads(vlm_dir, tmp_path, batch, False, **kwargs)
    loss, shape, grads = _loss_and_grads(vlm_dir, tmp_path, batch, True, **kwargs)

    supervised = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    vocab = full_shape[-1]
    assert full_shape == (*batch["input_ids"].shape, vocab)
    assert shape == (supervised, vocab)  # logits only where a supervised token is predicted
    assert supervised < batch["input_ids"].numel() / 10
    torch.testing.assert_close(loss, full_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == full_grads.keys() and any("lm_head" in n for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_batch_without_supervised_tokens_gives_the_same_nan(vlm_dir, tmp_path):
    """A batch whose answers were all truncated away: the same NaN loss as over all logits (HF's
    mean over no tokens), not an error from an empty selection."""
    batch = _batch(vlm_dir)
    batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
    full_loss, _, _ = _loss_and_grads(vlm_dir, tmp_path, batch, False)
    loss, shape, _ = _loss_and_grads(vlm_dir, tmp_path, batch, True)
    assert shape[0] == 0 and torch.isnan(loss) and torch.isnan(full_loss)


def test_label_smoothing_keeps_all_logits(vlm_dir, tmp_path):
    """HF's label smoother reads (B, L, vocab) logits: with it the flag computes them all."""
    batch = _batch(vlm_dir)
    full_loss, full_shape, _ = _loss_and_grads(vlm_dir, tmp_path, batch, False, smoothing=0.1)
    loss, shape, _ = _loss_and_grads(vlm_dir, tmp_path, batch, True, smoothing=0.1)
    assert shape == full_shape == (*batch["input_ids"].shape, full_shape[-1])
    torch.testing.assert_close(loss, full_loss)
