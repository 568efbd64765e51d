"""``vitsplit-vlm dense train`` once its flags are resolved: one recipe in setup steps.

    DenseTrainRun(args, plan, runtime).run()
        setup_data     training / validation sets, normalisation
        setup_model    the model through `recipes.dense_spec` (the factory benchmarks share)
        setup_resume   ``--resume``: weights, optimizer state, progress and RNG states
        setup_hooks    ``--save-every``, ``--eval-every``, the progress bar, ``--report-to``
        train          `engine.train`; ``OUT/train_log.jsonl`` on rank 0
        finish         ``OUT/checkpoint.pt``, the final (sharded) evaluation, ``metrics.json``

Every rank runs every step (collectives inside); only rank 0 prints and writes files.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vitsplit_vlm.core import flags

from .checkpoint import TrunkRef, fingerprint, load_trainable_state, load_trunk, save_checkpoint
from .engine import StepHook, TrainConfig, TrainResult, evaluate, train
from .feature_cache import cache_dense_dataset, cache_refusal, fixed_pipeline
from .longrun import (
    CheckpointHook,
    EvalHook,
    ProgressHook,
    RunRecord,
    Tracker,
    TrackerHook,
    make_tracker,
)
from .model import DenseModel, count_parameters
from .recipes import (
    build_dataset,
    dense_spec,
    eval_config,
    first_size,
    normalization,
    trunk_patch_size,
)
from .resume import check_identity, identity, pick, read_train_state, set_rng_states
from .runtime import Runtime
from .sampler import BatchPlan

if TYPE_CHECKING:
    from .cli import TrainPlan


class UsageError(ValueError):
    """A flag combination ``dense train`` refuses (the command line prints it as a usage error)."""


def train_config(args: argparse.Namespace, plan: TrainPlan) -> TrainConfig:
    preset = plan.preset
    return TrainConfig(
        iters=preset.iters, batch_size=preset.batch_size, lr=preset.lr,
        weight_decay=preset.weight_decay, task_head_lr_mult=args.task_head_lr_mult,
        schedule=preset.schedule, warmup_iters=preset.warmup_iters, grad_clip=preset.grad_clip,
        checkpoint_head=args.checkpoint_head, num_workers=args.workers, seed=args.seed,
        log_every=args.log_every, accumulation=args.accumulation,
    )  # fmt: skip


@dataclass
class Resumed:
    """What ``--resume`` found: the folder, `engine.snapshot`'s output, every rank's RNG."""

    folder: Path
    snapshot: dict
    rng: list[dict]


class DenseTrainRun:
    """One ``dense train`` run (see the module doc)."""

    def __init__(self, args: argparse.Namespace, plan: TrainPlan, runtime: Runtime) -> None:
        self.args, self.plan, self.runtime = args, plan, runtime
        self.out = plan.out
        self.cfg = train_config(args, plan)
        self.hooks: list[StepHook] = []
        self.tracker: Tracker | None = None
        self.bar: ProgressHook | None = None
        try:
            self.batch_plan = BatchPlan(self.cfg.batch_size, runtime.world_size,
                                        self.cfg.accumulation)  # fmt: skip
        except ValueError as err:
            raise UsageError(str(err)) from None
        for flag in ("save_every", "keep_last", "eval_every"):
            if getattr(args, flag) < 0:
                raise UsageError(f"--{flag.replace('_', '-')}: must be >= 0")

    def say(self, line: str) -> None:
        """Print on rank 0 (above the progress bar when there is one)."""
        if self.runtime.is_main:
            (self.bar.write if self.bar is not None else print)(line)

    # ---- setup ---------------------------------------------------------------------------
    def setup_data(self) -> None:
        plan, args = self.plan, self.args
        self.mean, self.std = normalization(plan.backbone)
        try:  # a wrong layout or an unusable set is one line naming the cause
            self.train_set = build_dataset(plan.task, plan.data, "train", plan.preset, self.mean,
                                           self.std, train=True, seed=args.seed,
                                           patch_size=trunk_patch_size(plan.backbone))  # fmt: skip
            if not args.augment:
                self.train_set.transforms = fixed_pipeline(self.train_set.transforms)
            self.batch_plan.check_dataset(len(self.train_set))
            self.val_set, self.eval_cfg = None, None
            if args.eval_untrained or not args.no_eval or args.eval_every:
                self.val_set = build_dataset(plan.task, plan.data, "val", plan.preset, self.mean,
                                             self.std, train=False)  # fmt: skip
        except ValueError as err:
            raise UsageError(str(err)) from None
        if self.val_set is not None:
            self.eval_cfg = eval_config(plan.task, plan.preset, first_size(self.val_set),
                                        max_images=args.max_eval_images)  # fmt: skip

    def setup_model(self) -> None:
        plan, args = self.plan, self.args
        trunk = load_trunk(plan.backbone)
        try:
            spec, origin = dense_spec(
                plan.task, args.method, trunk.config, plan.preset,
                overrides=flags.overrides(args),
                num_classes=getattr(self.train_set, "num_classes", None),
                class_names=getattr(self.train_set, "class_names", None),
            )  # fmt: skip
        except ValueError as err:
            raise UsageError(str(err)) from None
        if args.method == "vitsplit":
            split = spec.split
            self.say(f"layers: k={split.k} n={split.n} s={split.s} ({origin} unless given as "
                     "flags)")  # fmt: skip
        c = trunk.config
        self.ref = TrunkRef(str(plan.backbone), fingerprint(trunk), c.model_type,
                            c.num_hidden_layers, c.hidden_size)  # fmt: skip
        torch.manual_seed(args.seed)
        self.model = DenseModel(trunk, spec)
        self.params = count_parameters(self.model)
        self.identity = identity(spec=spec, trunk=self.ref, cfg=self.cfg,
                                 dataset_size=len(self.train_set))  # fmt: skip

    def setup_cache(self) -> None:
        """``--cache-features``: the training set reads the frozen trunk's hidden states from
        the cache (rank 0 builds what is missing first, the others then find it built)."""
        folder = self.args.cache_features
        if folder is None:
            return
        reason = cache_refusal(self.args.method, self.train_set)
        if reason is not None:
            raise UsageError(reason)
        trunk, layers = self.model.trunk_module(), self.model.required_layers
        trunk.to(self.runtime.device)
        for turn in ("main", "others"):
            if (turn == "main") == self.runtime.is_main:
                cached = cache_dense_dataset(self.train_set, trunk, layers, folder,
                                             device=self.runtime.device, workers=self.args.workers,
                                             log=self.say)  # fmt: skip
            if self.runtime.distributed:
                torch.distributed.barrier()
        self.train_set = cached

    def setup_resume(self) -> None:
        """Load the checkpoint ``--resume`` points at (rank 0 decides which) into the model."""
        from .distributed import broadcast_object

        self.resumed: Resumed | None = None
        if self.args.resume is None:
            return
        folder, notes = pick(self.args.resume, self.out) if self.runtime.is_main else (None, [])
        for note in notes:
            self.say(note)
        folder = broadcast_object(str(folder) if folder is not None else None)
        if folder is None:
            return
        weights, state = read_train_state(Path(folder))
        check_identity(state["identity"], self.identity, source=Path(folder))
        load_trainable_state(self.model, weights["state_dict"], source=folder)
        snapshot = {k: state[k] for k in ("optimizer", "scheduler", "scaler", "progress")}
        self.resumed = Resumed(Path(folder), snapshot, state["rng"])
        self.say(f"resuming from {folder} (step {state['step']})")

    def setup_hooks(self) -> None:
        args = self.args
        start = self.resumed.snapshot["progress"]["step"] if self.resumed else 0
        progress = args.progress if args.progress is not None else _stderr_is_terminal()
        self.bar = ProgressHook(self.cfg.iters, start, progress and self.runtime.is_main)
        self.hooks.append(self.bar)
        config = {**vars(args), "runtime": self.runtime.describe()}
        if self.runtime.is_main:
            try:
                self.tracker = make_tracker(args.report_to, self.out, _jsonable(config))
            except ValueError as err:
                raise UsageError(str(err)) from None
        if self.tracker is not None:
            self.hooks.append(TrackerHook(self.tracker))
        info = {"data": str(self.plan.data), "task": self.plan.task.name,
                "opts": _jsonable(self.plan.preset.to_dict()),
                "test_scale": self.plan.preset.scale}  # fmt: skip
        self.record = RunRecord(self.ref, self.mean, self.std, self.identity, info)
        if args.eval_every:
            self.hooks.append(EvalHook(self.out, args.eval_every, self.val_set, self.eval_cfg,
                                       self.record, self.plan.task.best_metric, self.tracker,
                                       say=self.say))  # fmt: skip
        if args.save_every:
            self.hooks.append(CheckpointHook(self.out, args.save_every, self.record,
                                             args.keep_last, say=self.say))  # fmt: skip

    # ---- run -----------------------------------------------------------------------------
    def run(self) -> int:
        if self.runtime.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.setup_data()
        self.setup_model()
        self.setup_cache()
        self.setup_resume()
        untrained = self._evaluate_untrained()
        self._describe()
        try:
            self.setup_hooks()
            result = self.train()
        finally:
            if self.bar is not None:
                self.bar.close()
            if self.tracker is not None:
                self.tracker.close()
        self.say(result.skips.summary())
        self.finish(result, untrained)
        return 0

    def _evaluate_untrained(self) -> dict | None:
        if not self.args.eval_untrained:
            return None
        metrics = evaluate(self.model, self.val_set, self.eval_cfg, runtime=self.runtime)
        self.say(f"untrained: {json.dumps(summary(metrics))}")
        return metrics

    def _describe(self) -> None:
        plan, runtime = self.plan, self.runtime
        self.say(f"{plan.task.name} / {self.args.method} on {plan.backbone} "
                 f"({self.ref.fingerprint}); data {plan.data} ({plan.kind})")  # fmt: skip
        self.say(f"trainable parameters: {json.dumps(self.params)}")
        if runtime.distributed or runtime.device.type != "cpu" or runtime.precision != "fp32":
            b = self.batch_plan
            self.say(f"runtime: {json.dumps(runtime.describe())}; global batch {b.global_batch} "
                     f"= {b.per_device} per device x {b.world_size} x {b.accumulation} "
                     "accumulation")  # fmt: skip

    def train(self) -> TrainResult:
        log_path = self.out / "train_log.jsonl"
        resumed = self.resumed
        if self.runtime.is_main:
            step = resumed.snapshot["progress"]["step"] if resumed else None
            _keep_lines_up_to(log_path, step)
            _keep_lines_up_to(self.out / "eval_log.jsonl", step)
        if resumed is not None:
            self._restore_rng(resumed.rng)
        with open(log_path, "a") if self.runtime.is_main else _nowhere() as log_file:

            def log(line: str) -> None:
                self.say(line)
                log_file.write(line + "\n")
                log_file.flush()

            return train(self.model, self.train_set, self.cfg, runtime=self.runtime, log=log,
                         hooks=tuple(self.hooks),
                         resume=resumed.snapshot if resumed else None)  # fmt: skip

    def _restore_rng(self, rng: list[dict]) -> None:
        ranks = self.runtime.ranks
        if len(rng) != ranks.world_size:
            self.say(f"resume: the checkpoint has RNG states of {len(rng)} process(es), this run "
                     f"{ranks.world_size}: RNG states not restored (weights, optimizer and data "
                     "order are)")  # fmt: skip
            return
        set_rng_states(rng[ranks.rank])

    def finish(self, result: TrainResult, untrained: dict | None) -> None:
        args, plan, cfg = self.args, self.plan, self.cfg
        opts = {**plan.preset.to_dict(), "max_eval_images": args.max_eval_images}
        info = {
            "data": str(plan.data), "task": plan.task.name, "train": cfg.__dict__,
            "opts": _jsonable(opts), "test_scale": plan.preset.scale, "steps": result.steps,
            "seconds": round(result.seconds, 1), "first_loss": result.first_loss,
            "last_loss": result.last_loss, "skipped": result.skips.as_dict(),
            "params": self.params, "runtime": self.runtime.describe(),
        }  # fmt: skip
        if result.best is not None:
            info["best"] = result.best
        if untrained is not None:
            info["eval_untrained"] = untrained
        if self.runtime.is_main:
            ckpt = save_checkpoint(self.out / "checkpoint.pt", self.model, trunk=self.ref,
                                   mean=self.mean, std=self.std, info=info)  # fmt: skip
            self.say(f"checkpoint: {ckpt}")
        if not args.no_eval:
            metrics = evaluate(self.model, self.val_set, self.eval_cfg, runtime=self.runtime)
            info["eval"] = metrics
            self.say(json.dumps(summary(metrics)))
        if self.runtime.is_main:
            (self.out / "metrics.json").write_text(json.dumps(_jsonable(info), indent=1) + "\n")


# --------------------------------------------------------------------------- helpers


def summary(metrics: dict) -> dict:
    """The scalar metrics, floats rounded to 4 decimals (one printed line)."""
    keep = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in keep.items()}


def _jsonable(obj: Any) -> Any:
    return json.loads(
        json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    )


def _stderr_is_terminal() -> bool:
    import sys

    return sys.stderr.isatty()


def _keep_lines_up_to(path: Path, step: int | None) -> None:
    """A fresh run empties the log; a resumed one drops the lines after its step (logged by the
    interrupted run past its last checkpoint)."""
    if not path.exists():
        return
    if step is None:
        path.write_text("")
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]  # fmt: skip
    path.write_text("".join(line + "\n" for line in kept))


class _nowhere:
    """A log file that discards (ranks other than 0)."""

    def __enter__(self) -> _nowhere:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write(self, text: str) -> None:
        return None

    def flush(self) -> None:
        return None
