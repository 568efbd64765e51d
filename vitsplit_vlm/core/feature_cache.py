"""Frozen-trunk feature cache: the hidden states a connector reads, computed once, read back.

The trunk is frozen and runs in eval mode, so its hidden states for a given input never change;
with deterministic preprocessing they can be computed once and reused every epoch. Only the
layers the trainable parts read are kept (`required_layers`: LLaVA-1.5's connector reads one of
CLIP's 25 hidden states, a dense ViT-Split a handful), all tokens, in the trunk's dtype.

Layout of a cache folder (nothing else in it is touched)::

    DIR/manifest.json            version and trunk fingerprint
    DIR/shard-00000.safetensors  tensors named "<key>/<layer>", (T, C) each
    DIR/files.json               file digests by (size, mtime) (`FeatureCache.file_digest`)

Shards are safetensors files read through `safe_open` (memory-mapped: an epoch reads only the
pages it needs, and DataLoader workers share the page cache). An entry's key is the caller's
`content_key` of the input (image content hash + preprocessing); the whole cache is tied to a
`trunk_fingerprint` (weights hash, config, layer indices, dtype), and a cache built for another
fingerprint is emptied and rebuilt, saying which part changed.

    cache = FeatureCache(folder, trunk_fingerprint(trunk, layers))
    build_features(cache, source, compute)       # source: Dataset of (key, pixels | None)
    hidden = cache.get(key)                      # {layer: (T, C)}
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .trunk import TrunkSpec, unwrap_vision_model

CACHE_VERSION = 1
MANIFEST = "manifest.json"
FILES = "files.json"
OPEN_SHARDS = 64  # shard handles kept open per process (least recently used closed first)
SHARD_BYTES = 256 * 2**20  # flush a shard at this size: an interrupted build keeps finished ones
# config keys that do not change what the trunk computes
_CONFIG_NOISE = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures")


# --------------------------------------------------------------------------- keys


def content_key(*parts: bytes | str) -> str:
    """A short hex digest of `parts` (image bytes, a preprocessing description, ...)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:32]


def tensor_key(pixels: torch.Tensor, preprocessing: str = "") -> str:
    """Key of an already preprocessed input: its exact values, dtype and shape."""
    data = pixels.detach().cpu().contiguous()
    raw = data.reshape(-1).view(torch.uint8).numpy().tobytes()
    return content_key(raw, f"{tuple(data.shape)}|{data.dtype}|{preprocessing}")


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer of `model` (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:32]


def trunk_fingerprint(model: torch.nn.Module, layers: Iterable[int]) -> dict:
    """What the cached hidden states depend on besides the input: the trunk's weights and
    config, the layer indices kept and the dtype they are computed in."""
    model = unwrap_vision_model(model)
    config = {k: v for k, v in model.config.to_dict().items() if k not in _CONFIG_NOISE}
    return {
        "model_type": model.config.model_type,
        "config": content_key(json.dumps(config, sort_keys=True, default=str)),
        "weights": weights_digest(model),
        "layers": sorted(set(int(i) for i in layers)),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }


def hidden_bytes(spec: TrunkSpec, pixel_shape: Sequence[int], layers: int, dtype: str) -> int:
    """Bytes one input of (..., H, W) pixels takes in the cache: `layers` x (T, C)."""
    h, w = pixel_shape[-2] // spec.patch_size, pixel_shape[-1] // spec.patch_size
    tokens = h * w + spec.num_prefix_tokens
    return (
        layers
        * tokens
        * spec.hidden_size
        * torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    )


def grid_from_tokens(spec: TrunkSpec, tokens: int) -> tuple[int, int]:
    """The (square) patch grid of a hidden state with `tokens` tokens; the VLM's images are
    square (LLaVA pads or resizes them)."""
    side = int(round((tokens - spec.num_prefix_tokens) ** 0.5))
    if side * side + spec.num_prefix_tokens != tokens:
        raise ValueError(
            f"cached hidden states have {tokens} tokens: not {spec.num_prefix_tokens} prefix "
            "tokens + a square patch grid; rebuild the cache with this trunk"
        )
    return side, side


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


# --------------------------------------------------------------------------- the cache


class FeatureCache:
    """A folder of cached hidden states for one trunk fingerprint (see the module doc).

    `manifest.json` holds the fingerprint only; which keys are cached is read from the shards'
    own headers (a shard is written under a temporary name and renamed when complete), so adding
    a shard never rewrites an index that grows with the data set. `files.json` memoises file
    digests (`file_digest`): a training epoch finds an image's key from its size and
    modification time without reading it. Reading is safe from DataLoader workers: shard
    handles are opened lazily in each process.
    """

    def __init__(
        self, folder: str | Path, fingerprint: dict, *, log: Callable[[str], None] | None = print
    ) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.entries: dict[str, str] = {}  # key -> shard file name
        self.files: dict[str, list] = {}  # path -> [size, mtime_ns, digest]
        self._handles: dict[str, object] = {}
        self._pid = os.getpid()
        self._load(log)

    # ---- folder ----------------------------------------------------------------------------
    def _load(self, log: Callable[[str], None] | None) -> None:
        path = self.folder / MANIFEST
        if not path.is_file():
            return
        try:
            manifest = json.loads(path.read_text())
            old = manifest["fingerprint"] if manifest.get("version") == CACHE_VERSION else None
        except (json.JSONDecodeError, KeyError, TypeError):
            old = None
        changed = _changed(old, self.fingerprint)
        if changed:
            if log is not None:
                log(f"feature cache {self.folder}: rebuilding, {changed} changed")
            self.clear()
            return
        from safetensors import safe_open

        for shard in sorted(self.folder.glob("shard-*.safetensors")):
            with safe_open(str(shard), framework="pt") as f:  # reads the header only
                keys = {name.split("/", 1)[0] for name in f.keys()}
            self.entries.update(dict.fromkeys(keys, shard.name))
        try:
            self.files = json.loads((self.folder / FILES).read_text())
        except (OSError, json.JSONDecodeError):
            self.files = {}

    def clear(self) -> None:
        """Delete this cache's own files (manifest, digests, shards)."""
        for shard in self.folder.glob("shard-*.safetensors*"):
            shard.unlink()
        for name in (MANIFEST, FILES):
            (self.folder / name).unlink(missing_ok=True)
        self.entries, self.files, self._handles = {}, {}, {}

    def _write_json(self, name: str, data: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / (name + ".tmp")
        tmp.write_text(json.dumps(data, sort_keys=True) + "\n")
        os.replace(tmp, self.folder / name)

    def save_files(self) -> None:
        """Write the file-digest memo (after hashing, and after a build)."""
        self._write_json(FILES, self.files)

    # ---- entries ---------------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("shard-*.safetensors"))

    def add_shard(self, features: dict[str, dict[int, torch.Tensor]]) -> None:
        """Write `{key: {layer: (T, C)}}` as a new shard (complete or absent, never partial)."""
        from safetensors.torch import save_file

        if not features:
            return
        if not (self.folder / MANIFEST).is_file():
            self._write_json(MANIFEST, {"version": CACHE_VERSION, "fingerprint": self.fingerprint})
        index = len(list(self.folder.glob("shard-*.safetensors")))
        while (self.folder / f"shard-{index:05d}.safetensors").exists():
            index += 1
        name = f"shard-{index:05d}.safetensors"
        tensors = {f"{key}/{layer}": t.contiguous() for key, h in features.items()
                   for layer, t in h.items()}  # fmt: skip
        save_file(tensors, str(self.folder / (name + ".tmp")))
        os.replace(self.folder / (name + ".tmp"), self.folder / name)
        self.entries.update({key: name for key in features})

    def get(self, key: str) -> dict[int, torch.Tensor]:
        """`{layer: (T, C)}` of one cached input (KeyError when it is not cached)."""
        shard = self.entries[key]
        handle = self._handle(shard)
        return {layer: handle.get_tensor(f"{key}/{layer}") for layer in self.fingerprint["layers"]}

    def _handle(self, shard: str):
        from safetensors import safe_open

        if self._pid != os.getpid():  # a forked DataLoader worker opens its own
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.pop(shard, None)
        if handle is None:
            handle = safe_open(str(self.folder / shard), framework="pt")
            if len(self._handles) >= OPEN_SHARDS:  # keep the most recently used ones open
                self._handles.pop(next(iter(self._handles)))
        self._handles[shard] = handle
        return handle

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}

    # ---- file digests ----------------------------------------------------------------------
    def file_digest(self, path: Path) -> str:
        """Content hash of a file, memoised by (size, mtime): re-read only when it changed."""
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        memo = self.files.get(str(path))
        if memo is not None and memo[:2] == stamp:
            return memo[2]
        digest = content_key(path.read_bytes())
        self.files[str(path)] = [*stamp, digest]
        return digest


def _changed(old: dict | None, new: dict) -> str:
    """Which fingerprint fields differ ("" when none); an unreadable manifest is "the format"."""
    if old is None:
        return "the cache format"
    fields = [name for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]
    names = {"weights": "the trunk's weights", "config": "the trunk's config",
             "layers": "the layers kept", "dtype": "the dtype", "model_type": "the trunk type"}  # fmt: skip
    return ", ".join(names.get(name, name) for name in fields)


# --------------------------------------------------------------------------- building


@dataclass
class BuildReport:
    """What `build_features` did: inputs computed, skipped (unusable), seconds, bytes added."""

    built: int = 0
    skipped: int = 0
    seconds: float = 0.0
    bytes: int = 0


def build_features(
    cache: FeatureCache,
    source: torch.utils.data.Dataset,
    compute: Callable[[torch.Tensor], dict[int, torch.Tensor]],
    *,
    item_bytes: int,
    batch_size: int = 16,
    workers: int = 0,
    log: Callable[[str], None] | None = print,
    desc: str = "feature cache",
) -> BuildReport:
    """Compute and store the hidden states of every input of `source` not cached yet.

    `source[i]` is ``(key, pixels (3, H, W))`` or ``(key, None)`` for an input that cannot be
    read (counted as skipped; the training data reports it). Loading and preprocessing run in
    `workers` DataLoader processes while the trunk (`compute`: pixels (B, 3, H, W) ->
    `{layer: (B, T, C)}`) runs here, batched by equal input size. The size the build will add
    (`item_bytes` per input) is printed first; a tqdm bar shows progress on a terminal.
    """
    from tqdm.auto import tqdm

    report = BuildReport()
    total = len(source)
    if total == 0:
        return report
    if log is not None:
        log(f"{desc}: computing {total} inputs x {format_bytes(item_bytes)} = "
            f"{format_bytes(total * item_bytes)} into {cache.folder} "
            f"({len(cache)} already cached)")  # fmt: skip
    loader = torch.utils.data.DataLoader(
        source, batch_size=batch_size, num_workers=workers, collate_fn=list
    )
    started = time.perf_counter()
    pending: dict[str, dict[int, torch.Tensor]] = {}
    pending_bytes = 0
    with tqdm(total=total, desc=desc, unit="img", disable=None, file=sys.stderr) as bar:
        for items in loader:
            usable = [(k, px) for k, px in items
                      if px is not None and k not in pending and k not in cache]  # fmt: skip
            report.skipped += sum(px is None for _, px in items)
            for key, hidden in _compute_grouped(usable, compute):
                pending[key] = hidden
                pending_bytes += sum(t.numel() * t.element_size() for t in hidden.values())
            if pending_bytes >= SHARD_BYTES:
                report.bytes += pending_bytes
                report.built += len(pending)
                cache.add_shard(pending)
                pending, pending_bytes = {}, 0
            bar.update(len(items))
    report.bytes += pending_bytes
    report.built += len(pending)
    cache.add_shard(pending)
    report.seconds = time.perf_counter() - started
    if log is not None:
        log(f"{desc}: {report.built} computed, {report.skipped} unreadable, "
            f"{format_bytes(report.bytes)} in {report.seconds:.1f} s")  # fmt: skip
    return report


def _compute_grouped(
    items: list[tuple[str, torch.Tensor]],
    compute: Callable[[torch.Tensor], dict[int, torch.Tensor]],
) -> list[tuple[str, dict[int, torch.Tensor]]]:
    """Run `compute` once per group of equal-size inputs; split the batch back per input
    (each tensor cloned: safetensors stores whole storages)."""
    groups: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
    for key, pixels in items:
        groups.setdefault(tuple(pixels.shape), []).append((key, pixels))
    out = []
    for group in groups.values():
        hidden = compute(torch.stack([px for _, px in group]))
        for row, (key, _) in enumerate(group):
            out.append((key, {i: h[row].detach().cpu().clone() for i, h in hidden.items()}))
    return out


# --------------------------------------------------------------------------- in a batch


@dataclass
class FrozenHidden:
    """Cached frozen hidden states standing in for the pixels they were computed from.

    `hidden`: ``{layer: (T, C)}`` for one input or ``{layer: (B, T, C)}`` for a batch;
    `shape`: the shape of those pixels, ``(3, H, W)`` or ``(B, 3, H, W)``, so code that reads
    the input size (``pixels.shape[-2:]``) works unchanged.
    """

    hidden: dict[int, torch.Tensor]
    shape: tuple[int, ...]

    @staticmethod
    def stack(items: Sequence[FrozenHidden]) -> FrozenHidden:
        layers = items[0].hidden
        hidden = {i: torch.stack([item.hidden[i] for item in items]) for i in layers}
        return FrozenHidden(hidden, (len(items), *items[0].shape))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> FrozenHidden:
        moved = {i: h.to(device, non_blocking=non_blocking) for i, h in self.hidden.items()}
        return FrozenHidden(moved, self.shape)

    @property
    def device(self) -> torch.device:
        return next(iter(self.hidden.values())).device
