"""`ViTSplitConfig`: which blocks are copied, which hidden states feed the prior head, and how
the parts are wired. It validates itself; checks that need the trunk's depth live in `resolve`.

Index conventions (Hugging Face's `output_hidden_states`): `hidden_states[0]` is the embedding output and
`hidden_states[i]` the output of block `i - 1`; a trunk has `N` blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace

VARIANTS = ("dense", "vlm")
SELECTIONS = ("uniform", "sparse_gate")
TASK_INPUTS = ("all", "patch")
COMPONENTS = ("prior", "task", "fusion")
OFFSET_INITS = ("zero", "default")
CONV_INITS = ("default", "center")


def _setting(help: str, *, choices: tuple | None = None, flag: bool = True) -> dict:
    """Field metadata: the help text and choices its command-line flag shows (`core.flags`)."""
    return {"help": help, "choices": choices, "flag": flag}


@dataclass(frozen=True)
class ViTSplitConfig:
    """How ViT-Split splits a frozen trunk: the one declaration of every ViT-Split setting.

    The VLM stores it nested in `ViTSplitLlavaConfig.vitsplit_config`, dense checkpoints in their
    `DenseSpec`; `to_dict` / `from_dict` are its serialised form, and `vitsplit_vlm.core.flags`
    turns the fields marked as flags into command-line options. Each task starts from its own
    preset (`llava()` for LLaVA-1.5, the paper's per-task layers for dense tasks) and flags
    override single fields.

    Attributes:
        k: number of trailing blocks copied into the task head.
        n: number of frozen intermediate layers the prior head reads.
        s: first block index of uniform prior selection. ``None``: 2 when ``n > 1``; with
            ``n == 1`` the block that produces the feature layer (LLaVA's penultimate state).
        selection: ``"uniform"`` (paper §3.2 formula) or ``"sparse_gate"`` (learned top-n gate).
        variant: ``"dense"`` (deformable convs at the trunk width) or ``"vlm"`` (the official
            LLaVA connector: plain convs, fusion projected to ``out_channels``).
        feature_layer: the hidden state the original model hands downstream, HF style
            (``-1`` = last, ``-2`` = penultimate as in LLaVA-1.5). Positive values are indices.
        task_input: ``"all"`` tokens (CLS/registers included; output equals the frozen feature
            layer at init) or ``"patch"`` tokens only (the official LLaVA connector).
            ``None``: ``"all"`` for dense, ``"patch"`` for vlm.
        components: which of prior/task/fusion exist (paper Tab. 6 ablations). Without fusion
            the prior and task maps are added; with neither the output is the frozen feature map.
        out_channels: fusion output width (vlm variant: the LLM width). ``None``: trunk width.
        prior_layers: explicit block indices for the prior head (overrides ``selection``).
        final_norm: pass frozen features and the task-head output through the trunk's final
            LayerNorm. ``None``: yes for dense on trunks whose final norm covers every token
            (DINOv2, ViT, SigLIP), no for CLIP and for the vlm variant.
        gate_temperature: softmax temperature of the sparse gate (official 0.5).
        deform_offset_init: ``"zero"`` (standard DCN practice: starts as a plain 3x3 conv) or
            ``"default"`` (PyTorch's conv init, as the official code).
        conv_init: the 3x3 convs of the prior head and the fusion net. ``"default"``: PyTorch's
            conv init (the official code). ``"center"``: only the centre tap is non-zero,
            initialised as PyTorch initialises a 1x1 conv, so at the start every output patch
            reads its own patch alone (as LLaVA's MLP connector) and training learns how far to
            mix; on small patch grids (the playground's 8x8) a random 3x3 kernel blurs
            neighbouring objects together before the LLM sees them.
    """

    k: int = field(default=3, metadata=_setting("blocks copied into the trainable task head"))
    n: int = field(default=4, metadata=_setting("frozen intermediate layers the prior head reads"))
    s: int | None = field(default=None, metadata=_setting("first prior block of uniform selection"))
    selection: str = field(
        default="uniform",
        metadata=_setting(
            "prior layers: uniform from s, or a learned top-n gate over all blocks",
            choices=SELECTIONS,
        ),
    )
    variant: str = field(
        default="dense", metadata=_setting("set by the task", choices=VARIANTS, flag=False)
    )
    feature_layer: int = field(
        default=-1,
        metadata=_setting("hidden state handed downstream (-1 last, -2 penultimate)", flag=False),
    )
    task_input: str | None = field(
        default=None,
        metadata=_setting(
            "task-head input: all tokens (exact init) or patch tokens (official LLaVA)",
            choices=TASK_INPUTS,
        ),
    )
    components: tuple[str, ...] = field(
        default=COMPONENTS,
        metadata=_setting("comma-separated subset of prior,task,fusion (paper Tab. 6)"),
    )
    out_channels: int | None = field(
        default=None, metadata=_setting("fusion output width (set by the task)", flag=False)
    )
    prior_layers: tuple[int, ...] | None = field(
        default=None,
        metadata=_setting("comma-separated block indices for the prior head (overrides s)"),
    )
    final_norm: bool | None = field(
        default=None,
        metadata=_setting("pass frozen features through the trunk's final norm (true/false)"),
    )
    gate_temperature: float = field(
        default=0.5, metadata=_setting("softmax temperature of the sparse gate")
    )
    deform_offset_init: str = field(
        default="zero",
        metadata=_setting(
            "deformable conv offsets: zero (a plain 3x3 at start) or PyTorch's default init",
            choices=OFFSET_INITS,
        ),
    )

    conv_init: str = field(
        default="default",
        metadata=_setting(
            "3x3 convs: PyTorch's default init (official) or center (a 1x1 conv at start)",
            choices=CONV_INITS,
        ),
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "components", tuple(self.components))
        if self.prior_layers is not None:
            object.__setattr__(self, "prior_layers", tuple(int(i) for i in self.prior_layers))
        _check(
            self.variant in VARIANTS, "variant", f"must be one of {VARIANTS}, got {self.variant!r}"
        )
        _check(
            self.selection in SELECTIONS,
            "selection",
            f"must be one of {SELECTIONS}, got {self.selection!r}",
        )
        _check(
            self.task_input is None or self.task_input in TASK_INPUTS,
            "task_input",
            f"must be one of {TASK_INPUTS} or None, got {self.task_input!r}",
        )
        unknown = [c for c in self.components if c not in COMPONENTS]
        _check(not unknown, "components", f"unknown {unknown}; choose from {COMPONENTS}")
        _check(
            "fusion" not in self.components or {"prior", "task"} <= set(self.components),
            "components",
            "'fusion' needs both 'prior' and 'task'",
        )
        _check(self.k >= 1 or "task" not in self.components, "k", f"must be >= 1, got {self.k}")
        _check(self.n >= 1 or "prior" not in self.components, "n", f"must be >= 1, got {self.n}")
        if self.prior_layers is not None:
            _check(
                len(self.prior_layers) == self.n,
                "prior_layers",
                f"has {len(self.prior_layers)} entries but n={self.n}",
            )
        _check(self.s is None or self.s >= 0, "s", f"must be >= 0, got {self.s}")
        _check(self.feature_layer != 0, "feature_layer", "0 is the embedding output, not a block")
        _check(
            self.out_channels is None or self.out_channels > 0,
            "out_channels",
            f"must be positive, got {self.out_channels}",
        )
        _check(
            self.out_channels is None or self.variant == "vlm",
            "out_channels",
            "only the vlm variant projects the fused map; dense stays at the trunk width",
        )
        _check(self.gate_temperature > 0, "gate_temperature", "must be positive")
        _check(
            self.deform_offset_init in OFFSET_INITS,
            "deform_offset_init",
            f"must be one of {OFFSET_INITS}, got {self.deform_offset_init!r}",
        )
        _check(
            self.conv_init in CONV_INITS,
            "conv_init",
            f"must be one of {CONV_INITS}, got {self.conv_init!r}",
        )

    # ---- presets -------------------------------------------------------------------------
    @classmethod
    def llava(cls, out_channels: int | None = None, **overrides) -> ViTSplitConfig:
        """The official LLaVA-1.5 connector: k=1, n=1, penultimate layer, patch tokens in.

        As the official code's `mm_projector` (`mm_tuned_layers_num 1`,
        `mm_frozen_select_layer [-2]`): the task head copies the block producing the penultimate
        state, the prior head reads that frozen state; `out_channels` is the LLM width.
        """
        base = dict(k=1, n=1, variant="vlm", feature_layer=-2, task_input="patch")
        base.update(overrides)
        return cls(out_channels=out_channels, **base)

    # ---- derived ---------------------------------------------------------------------------
    @property
    def has_prior(self) -> bool:
        return "prior" in self.components

    @property
    def has_task(self) -> bool:
        return "task" in self.components

    @property
    def has_fusion(self) -> bool:
        return "fusion" in self.components

    @property
    def resolved_task_input(self) -> str:
        if self.task_input is not None:
            return self.task_input
        return "all" if self.variant == "dense" else "patch"

    def with_(self, **changes) -> ViTSplitConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain JSON data (tuples as lists); `from_dict` reads it back."""
        d = asdict(self)
        d["components"] = list(self.components)
        if self.prior_layers is not None:
            d["prior_layers"] = list(self.prior_layers)
        return d

    @classmethod
    def from_dict(cls, data: Mapping) -> ViTSplitConfig:
        """The config of `to_dict`'s output; an unknown key is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        _check(not unknown, "from_dict", f"unknown settings {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def resolve(self, num_blocks: int) -> ResolvedLayers:
        """Check the config against a trunk of `num_blocks` blocks and derive every index."""
        from .selection import uniform_indices

        N = num_blocks
        f = self.feature_layer if self.feature_layer > 0 else N + 1 + self.feature_layer
        _check(
            1 <= f <= N, "feature_layer", f"{self.feature_layer} is outside 1..{N} for {N} blocks"
        )
        if self.has_task:
            _check(
                self.k < N, "k", f"must be smaller than the number of blocks ({N}), got {self.k}"
            )
            _check(self.k <= f, "k", f"copies blocks {f - self.k}..{f - 1}; needs k <= f={f}")
        prior_blocks: tuple[int, ...] = ()
        gate_candidates = 0
        if self.has_prior:
            last = f - 1  # the block that produces the feature layer
            if self.prior_layers is not None:
                bad = [i for i in self.prior_layers if not 0 <= i <= last]
                _check(not bad, "prior_layers", f"{bad} outside block range 0..{last}")
                prior_blocks = self.prior_layers
            elif self.selection == "sparse_gate":
                _check(self.n <= f, "n", f"the gate picks n of {f} layers; got n={self.n}")
                gate_candidates = f
                prior_blocks = tuple(range(f))
            else:
                s = self.s if self.s is not None else (2 if self.n > 1 else last)
                _check(
                    0 <= s <= last, "s", f"must lie in 0..{last} (block producing f={f}), got {s}"
                )
                _check(
                    self.n <= last - s + 1,
                    "n",
                    f"{self.n} layers do not fit between block {s} and block {last}",
                )
                prior_blocks = tuple(uniform_indices(s=s, n=self.n, last=last))
        return ResolvedLayers(
            num_blocks=N,
            feature_layer=f,
            task_blocks=tuple(range(f - self.k, f)) if self.has_task else (),
            prior_blocks=prior_blocks,
            gate_candidates=gate_candidates,
        )


@dataclass(frozen=True)
class ResolvedLayers:
    """Indices derived from a config and a trunk depth.

    `task_blocks` and `prior_blocks` are block indices (0..N-1); block `i` outputs
    `hidden_states[i + 1]`.
    """

    num_blocks: int
    feature_layer: int
    task_blocks: tuple[int, ...]
    prior_blocks: tuple[int, ...]
    gate_candidates: int

    @property
    def task_input_layer(self) -> int | None:
        """Hidden-state index fed to the task head (`f - k`)."""
        return self.task_blocks[0] if self.task_blocks else None

    @property
    def prior_hidden_layers(self) -> tuple[int, ...]:
        return tuple(i + 1 for i in self.prior_blocks)

    @property
    def required_layers(self) -> tuple[int, ...]:
        """Every hidden-state index the heads read, ascending."""
        needed = set(self.prior_hidden_layers)
        if self.task_input_layer is not None:
            needed.add(self.task_input_layer)
        if not needed:  # no prior, no task: the plain frozen feature layer ("linear" baseline)
            needed.add(self.feature_layer)
        return tuple(sorted(needed))

    @property
    def deepest_layer(self) -> int:
        return self.required_layers[-1]


def _check(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"ViTSplitConfig.{field_name}: {message}")
