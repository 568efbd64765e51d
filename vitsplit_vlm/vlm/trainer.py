"""`VLMTrainer`: HF Trainer with LLaVA's modality-grouped sampler, a connector lr group, and
checkpoints that count only when complete and resume without pickle (`vitsplit_vlm.vlm.resume`)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import resume
from .data import IGNORE_INDEX
from .sampler import LengthGroupedSampler

CONNECTOR_MARK = "multi_modal_projector."


class VLMTrainer(Trainer):
    """Adds `--group_by_modality_length` and `--mm_projector_lr` (connector parameter group);
    marks each checkpoint complete once every rank has written it and only then rotates
    (`--save_total_limit`); loads a resumed checkpoint weights-only."""

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.args.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(  # as LLaVA: batches of one modality, longest first
            dataset.modality_lengths,
            batch_size=self.args.train_batch_size,
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            group_by_modality=True,
            seed=self.args.seed,
        )

    def compute_loss(self, model, inputs, *args, **kwargs):
        """HF's loss; with `--supervised_logits_only` (default) the LM head runs only at the
        positions whose next token is supervised: transformers' ``logits_to_keep`` as a (B, L)
        mask and ``shift_labels`` the labels there (see `supervised_positions`). Not with
        ``--label_smoothing_factor`` or a ``compute_loss_func``: those read (B, L, vocab) logits."""
        own_loss = self.label_smoother is None and self.compute_loss_func is None
        if self.args.supervised_logits_only and own_loss and inputs.get("labels") is not None:
            keep, shift_labels = supervised_positions(inputs["labels"])
            inputs = {**inputs, "logits_to_keep": keep, "shift_labels": shift_labels}
        return super().compute_loss(model, inputs, *args, **kwargs)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        lr, proj_lr, wd = self.args.learning_rate, self.args.mm_projector_lr, self.args.weight_decay
        groups: dict[tuple[bool, bool], list] = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                key = (CONNECTOR_MARK in name and proj_lr is not None, name in decay)
                groups.setdefault(key, []).append(param)
        param_groups = [
            {
                "params": ps,
                "weight_decay": wd if is_decay else 0.0,
                "lr": proj_lr if is_conn else lr,
            }
            for (is_conn, is_decay), ps in sorted(groups.items())
        ]
        cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = cls(param_groups, **kwargs)
        return self.optimizer

    def _save_checkpoint(self, model, trial) -> None:
        """HF's save, then the `resume.MARKER` once every rank's files are written, then the
        rotation (HF rotates before returning, while the new folder is still partial: its own
        rotation is switched off for the call)."""
        run_dir = Path(self._get_output_dir(trial=trial))
        folder = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            resume.discard_partial(folder)  # an earlier attempt at this step was cut short
        self.accelerator.wait_for_everyone()
        limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            resume.mark_complete(folder)
            resume.rotate(run_dir, limit, protect=self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        """HF's preparation, which loads a resumed DeepSpeed checkpoint: weights-only."""
        if resume_from_checkpoint is None:
            return super()._prepare_for_training(max_steps, train_dataloader, None)
        with resume.weights_only_loading(allow_pickle=self.args.allow_pickle_checkpoints):
            return super()._prepare_for_training(
                max_steps, train_dataloader, resume_from_checkpoint
            )


def supervised_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, shift_labels)`` for labels (B, L): ``keep`` (B, L) marks the positions whose next
    token is supervised (position t predicts labels[:, t + 1]; the last predicts nothing), and
    ``shift_labels`` (N,) are those next tokens, in the order transformers flattens the kept
    positions' logits (row-major). The cross-entropy over them equals the loss over all
    positions, where the others are ignored (IGNORE_INDEX). Few are supervised: on the playground
    13.8% of the padded batch positions in stage 1 and 2.4% in stage 2; in LLaVA-1.5's stage 1 a
    caption of a few dozen tokens follows 576 image tokens."""
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    keep = shifted != IGNORE_INDEX
    return keep, shifted[keep]


class StepTimer(TrainerCallback):
    """The step training (re)started from (a resumed run times only its own steps) and the wall
    time of every optimizer step of this run (`step_seconds`, what benchmarks read)."""

    def __init__(self) -> None:
        self.start_step = 0
        self.step_seconds: list[float] = []
        self._began = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step

    def on_step_begin(self, args, state, control, **kwargs):
        self._began = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds.append(round(time.perf_counter() - self._began, 5))
