"""A LLaVA data set with every kind of bad sample planted, and one scaled to LLaVA's 665K records.

`write_broken_dataset(root, base, tokenizer_dir)` copies the good records of a playground set
(`shapes.write_llava_dataset`) and adds bad ones, one group per skip reason of training
(`vitsplit_vlm.vlm.data.SKIP_REASONS`), each with ids ``bad-<reason>-<k>`` (a record that is not
a JSON object has no id: ``#<index>``). It returns what it planted, so a checker can be scored
planted vs found. Samples that must pass (a 16-bit PNG, a symlink that stays inside the image
folder, unicode text, a text-only record) are planted too, as ``ok-*``.

``tokenization_mismatch`` needs a tokenizer in which a token crosses the boundary between the
prompt and a reply; the tiny tokenizer has none (no merge crosses a space). The set therefore
comes with ``llm/``: the same tokenizer plus one added token, ``": Xyzzy"``, which is how such
tokens arise in real vocabularies; a reply starting with ``Xyzzy`` then straddles the boundary.

`write_scaled_dataset(path, base, num_records)` repeats the playground's records (fresh ids, the
same images) up to `num_records`, for throughput measurements at LLaVA-1.5's scale
(``llava_v1_5_mix665k.json``: 665,298 records).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .shapes import LlavaDatasetPaths

LLAVA_MIX665K_RECORDS = 665_298
BOUNDARY_TOKEN = ": Xyzzy"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "chat_template.jinja")  # fmt: skip


@dataclass
class BrokenDataset:
    """`data`: the JSON list; `image_folder`; `llm`: the tokenizer folder with the boundary
    token; `planted`: reason -> ids of the bad records; `controls`: ids that must pass."""

    data: Path
    image_folder: Path
    llm: Path
    planted: dict[str, list[str]] = field(default_factory=dict)
    controls: list[str] = field(default_factory=list)
    good: int = 0


def _turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"from": who, "value": text} for who, text in pairs]


def _images(folder: Path, outside: Path, sample: Path) -> dict[str, str]:
    """Write the bad and control image files; names (relative to `folder` unless absolute)."""
    png = sample.read_bytes()
    (folder / "empty.png").write_bytes(b"")
    (folder / "noise.png").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    outside.mkdir(parents=True, exist_ok=True)
    shutil.copy(sample, outside / "outside.png")
    link_out, link_in = folder / "link_out.png", folder / "link_in.png"
    for link in (link_out, link_in):
        link.unlink(missing_ok=True)
    os.symlink(outside / "outside.png", link_out)
    os.symlink(sample, link_in)
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "grey16.png")  # mode I;16
    return {
        "sample": sample.name,
        "outside_rel": f"../{outside.name}/outside.png",
        "outside_abs": str(outside / "outside.png"),
    }


def _bad_records(names: dict[str, str]) -> dict[str, list[Any]]:
    """Reason -> bad records (ids set by the caller)."""
    ask = "<image>\nWhat colour is the circle?"
    img = names["sample"]

    def rec(image: str | None, *pairs: tuple[str, str]) -> dict[str, Any]:
        record: dict[str, Any] = {"conversations": _turns(*pairs)}
        if image is not None:
            record["image"] = image
        return record

    long_question = "<image>\n" + "Describe every detail of this picture please. " * 400
    return {
        "bad_format": [
            "not an object",
            {"conversations": "not a list", "image": img},
            {**rec(None, ("human", ask), ("gpt", "Red")), "image": [img]},
        ],
        "bad_roles": [
            rec(img, ("human", ask), ("bot", "Red")),
            rec(img, ("human", ask), ("human", "Well?"), ("gpt", "Red")),
        ],
        "no_assistant_turn": [rec(img, ("human", ask))],
        "empty_turn": [rec(img, ("human", ask), ("gpt", "   "))],
        "image_in_reply": [
            rec(img, ("human", "What colour is the circle?"), ("gpt", "<image> Red"))
        ],
        "image_count": [
            rec(img, ("human", "What colour is the circle?"), ("gpt", "Red")),
            rec(None, ("human", ask), ("gpt", "Red")),
        ],
        "path_outside_folder": [
            rec(names["outside_rel"], ("human", ask), ("gpt", "Red")),
            rec(names["outside_abs"], ("human", ask), ("gpt", "Red")),
            rec("link_out.png", ("human", ask), ("gpt", "Red")),
        ],
        "missing_image": [rec("no_such_image.png", ("human", ask), ("gpt", "Red"))],
        "corrupt_image": [
            rec(name, ("human", ask), ("gpt", "Red"))
            for name in ("empty.png", "noise.png", "truncated.png")
        ],
        "too_long": [rec(img, ("human", long_question), ("gpt", "A picture."))],
        "tokenization_mismatch": [rec(img, ("human", ask), ("gpt", "Xyzzy is the answer."))],
    }


def _controls(names: dict[str, str]) -> list[dict[str, Any]]:
    ask = "<image>\nWhat colour is the circle?"
    return [
        {"image": "grey16.png", "conversations": _turns(("human", ask), ("gpt", "Grey"))},
        {"image": "link_in.png", "conversations": _turns(("human", ask), ("gpt", "Red"))},
        {"image": names["sample"], "conversations": _turns(("human", ask), ("gpt", "Rot, 赤 🙂"))},
        {"conversations": _turns(("human", "Which shape is round?"), ("gpt", "The circle."))},
    ]


def write_boundary_tokenizer(tokenizer_dir: Path, out: Path) -> Path:
    """`tokenizer_dir`'s tokenizer plus the added token `BOUNDARY_TOKEN`, saved in `out`."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_tokens([AddedToken(BOUNDARY_TOKEN, normalized=False)])
    tokenizer.save_pretrained(out)
    return out


def write_broken_dataset(root: Path, base: LlavaDatasetPaths, tokenizer_dir: Path) -> BrokenDataset:
    """The good finetune records of `base` plus planted bad ones and controls (module doc)."""
    root.mkdir(parents=True, exist_ok=True)
    folder = root / "images"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(base.image_folder, folder)
    good = json.loads(base.finetune.read_text())
    sample = folder / next(r["image"] for r in good if "image" in r)
    names = _images(folder, root / "outside", sample)
    records: list[Any] = list(good)
    out = BrokenDataset(root / "broken.json", folder, root / "llm", good=len(good))
    for reason, bad in _bad_records(names).items():
        for k, record in enumerate(bad):
            if isinstance(record, dict):
                record = {"id": f"bad-{reason}-{k}", **record}
                out.planted.setdefault(reason, []).append(record["id"])
            else:
                out.planted.setdefault(reason, []).append(f"#{len(records)}")
            records.append(record)
    for k, record in enumerate(_controls(names)):
        records.append({"id": f"ok-{k}", **record})
        out.controls.append(f"ok-{k}")
    out.data.write_text(json.dumps(records, indent=1, ensure_ascii=False))
    write_boundary_tokenizer(tokenizer_dir, out.llm)
    return out


def write_scaled_dataset(path: Path, base: LlavaDatasetPaths, num_records: int) -> Path:
    """`num_records` records cycling through `base`'s finetune records (ids made unique, same
    images), written as one JSON list, streamed."""
    records = json.loads(base.finetune.read_text())
    with open(path, "w", encoding="utf-8") as f:
        f.write("[")
        for i in range(num_records):
            record = {**records[i % len(records)], "id": f"scaled-{i:07d}"}
            f.write(("," if i else "") + "\n" + json.dumps(record))
        f.write("\n]\n")
    return path
