"""Any chat LLM and any vision tower by path: tiny random Llama-3, Qwen3, Gemma3 and Mistral with
their real published tokenizers, on CLIP, SigLIP, DINOv2 and DINOv2-with-registers towers, run
the whole LLaVA path: stage 1 (`plain`, connector only), stage 2 (the LLM's chat format, from
stage 1's connector), save, reload, `eval answer` and the chat loop.

Training runs in this process without DeepSpeed (`test_vlm_train` covers ZeRO-2/3 on the tiny
Llama), one step each, so the four combinations stay fast. What each one proves:

- no sample is skipped as ``tokenization_mismatch`` and the loss is finite and positive (LLaVA
  with a Llama-3 or Qwen LLM and the Vicuna masking: mismatch warnings and zero loss);
- the saved folder records the template (and, for ``chat_template``, the tokenizer's Jinja)
  and reloads with the LLM's own architecture, tied embeddings still tied;
- generation stops at the template's end-of-turn token, the pad token is the tokenizer's
  choice, and batched answers (left-padded) equal batch-1 answers;
- `eval answer` reads the template from the folder and the chat streams the engine's answers.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from vitsplit_vlm.cli import main
from vitsplit_vlm.eval.vqav2 import VQAv2Task
from vitsplit_vlm.playground.shapes import write_llava_dataset


@dataclass(frozen=True)
class Combo:
    """One LLM x tower x connector x template run end to end (the README's table)."""

    llm: str  # a family of conftest.TINY_LLMS
    tower: str  # a field of TinyPaths
    version: str  # --version of stage 2
    end_of_turn: str  # the token generation must stop at
    pad: str  # the pad token the tokenizer is given (its own, else unk, else eos)
    tied: bool  # the LLM ties its input and output embeddings
    connector: str = "vitsplit"  # --mm_projector_type


COMBOS = {
    "llama3-clip": Combo("llama3", "clip", "llava_llama_3", "<|eot_id|>", "<|eot_id|>", False),
    "qwen3-siglip": Combo("qwen3", "siglip", "chat_template", "<|im_end|>", "<|endoftext|>", True),
    "gemma3-dinov2reg": Combo(
        "gemma3", "dinov2_reg", "chat_template", "<end_of_turn>", "<pad>", True
    ),
    "mistral-dinov2": Combo("mistral", "dinov2", "mistral_instruct", "</s>", "<unk>", False),
    # a multi-layer baseline whose image tokens outnumber the patches (64 + 2 x 8)
    "mistral-siglip-dc_sti": Combo(
        "mistral", "siglip", "mistral_instruct", "</s>", "<unk>", False, "dc_sti"
    ),
}
MAX_NEW = 6


def flags(combo: Combo, llm: Path, tower: Path, data, out: Path, data_path: Path, version: str):
    """LLaVA's training flags at tiny sizes: one step, batch 2, ViT-Split with k = n = 1."""
    split = ("--vitsplit_k", "1", "--vitsplit_n", "1") if combo.connector == "vitsplit" else ()
    return [str(a) for a in (
        "--model_name_or_path", llm, "--vision_tower", tower, "--data_path", data_path,
        "--image_folder", data.image_folder, "--output_dir", out, "--version", version,
        "--mm_projector_type", combo.connector, *split,
        "--per_device_train_batch_size", "2", "--max_steps", "1", "--learning_rate", "1e-3",
        "--model_max_length", "512", "--save_strategy", "no", "--logging_steps", "1",
        "--dataloader_num_workers", "0", "--report_to", "none", "--seed", "0",
    )]  # fmt: skip


def assert_trained(summary: dict, where: str) -> None:
    losses = summary["first_losses"] + summary["last_losses"]
    assert summary["steps"] == 1, where
    assert losses and all(math.isfinite(x) and x > 0 for x in losses), f"{where}: {losses}"
    assert summary["skipped"].get("total", 0) == 0, f"{where}: {summary['skipped']}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_llava_dataset(
        tmp_path_factory.mktemp("llms_data"), num_train=4, num_heldout=2, image_size=112
    )


@pytest.fixture(scope="module", params=sorted(COMBOS))
def trained(request, tiny, tiny_llm, data, tmp_path_factory):
    """(combo, stage-2 folder): stage 1 then stage 2, in this process."""
    from vitsplit_vlm.vlm.train import train

    combo = COMBOS[request.param]
    llm, tower = tiny_llm(combo.llm), getattr(tiny, combo.tower)
    root = tmp_path_factory.mktemp(f"llms-{request.param}")
    stage1 = train(
        [*flags(combo, llm, tower, data, root / "s1", data.pretrain, "plain"),
         "--tune_mm_mlp_adapter", "True"]
    )  # fmt: skip
    assert_trained(stage1, f"{request.param} stage 1")
    stage2 = train(
        [*flags(combo, llm, tower, data, root / "s2", data.finetune, combo.version),
         "--pretrain_mm_mlp_adapter", str(root / "s1" / "mm_projector.safetensors")]
    )  # fmt: skip
    assert_trained(stage2, f"{request.param} stage 2")
    assert stage2["template"] == combo.version
    return combo, root / "s2"


def test_saved_model_reloads_with_its_llm_tokenizer_and_template(trained, tiny, tiny_llm):
    from transformers import AutoConfig, AutoImageProcessor

    from vitsplit_vlm.vlm.engine import VLMEngine

    combo, folder = trained
    config = json.loads((folder / "config.json").read_text())
    assert config["conv_template"] == combo.version
    assert (config["llm_chat_template"] is not None) == (combo.version == "chat_template")
    llm_type = AutoConfig.from_pretrained(tiny_llm(combo.llm)).model_type
    assert config["text_config"]["model_type"] == llm_type
    assert config["mm_projector_type"] == combo.connector

    engine = VLMEngine.from_pretrained(folder, device="cpu")
    model, tokenizer = engine.model, engine.tokenizer
    assert engine.template.name == combo.version and engine.template.stop_str == combo.end_of_turn
    assert tokenizer.pad_token == combo.pad
    stops = model.generation_config.eos_token_id
    stops = stops if isinstance(stops, list) else [stops]
    assert tokenizer.convert_tokens_to_ids(combo.end_of_turn) in stops
    # the processor is the tower's own (size, normalisation); the image tokens follow its grid
    tower = AutoImageProcessor.from_pretrained(getattr(tiny, combo.tower))
    assert engine.image_processor.image_mean == tower.image_mean
    assert engine.image_processor.to_dict()["size"] == tower.to_dict()["size"]
    grid = 112 // model.config.vision_config.patch_size
    extra = 2 * (grid * grid // 8) if combo.connector == "dc_sti" else 0
    assert model.config.image_seq_length == grid * grid + extra
    llm = model.model.language_model
    tied = model.lm_head.weight.data_ptr() == llm.get_input_embeddings().weight.data_ptr()
    assert tied == combo.tied


def test_eval_answer_and_chat_answer_with_the_saved_template(trained, data, tmp_path, capsys):
    from vitsplit_vlm.serve.cli_chat import chat_loop
    from vitsplit_vlm.vlm.engine import GenerationSettings, Request, VLMEngine

    combo, folder = trained
    answers = tmp_path / "answers.jsonl"
    code = main(
        ["eval", "answer", "--task", "vqav2", "--model-path", str(folder), "--question-file",
         str(data.heldout), "--image-folder", str(data.image_folder), "--answers-file",
         str(answers), "--batch-size", "4", "--temperature", "0", "--max-new-tokens",
         str(MAX_NEW), "--no-progress"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["conv_mode"] == combo.version
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    questions = [json.loads(line) for line in data.heldout.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [q["question_id"] for q in questions]

    # batched (left-padded, pad = the tokenizer's) answers equal batch-1 answers
    engine = VLMEngine.from_pretrained(folder, device="cpu")
    settings = GenerationSettings(max_new_tokens=MAX_NEW, temperature=0.0)
    requests = []
    for q, row in zip(questions, rows, strict=True):
        image = Image.open(data.image_folder / q["image"]).convert("RGB")
        prompt = VQAv2Task().build_prompt(row["prompt"])  # what eval answer asks
        requests.append(Request(image, [(engine.template.user, prompt)]))
    one_by_one = [engine.generate([request], settings)[0] for request in requests]
    assert [r["text"] for r in rows] == one_by_one
    for text in one_by_one:
        assert combo.end_of_turn not in text  # cut at the stop string

    # A random tiny LLM may answer only end-of-turn tokens or whitespace (empty text), which
    # would make the comparison above vacuous: the generated token ids, MAX_NEW of them with the
    # stop tokens held off, are the same in batches of 4 (left-padded) as one by one.
    def new_tokens(chunk):
        batch = engine.collate(chunk)
        out = engine.model.generate(
            **batch, pad_token_id=engine.tokenizer.pad_token_id, do_sample=False,
            max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW,
        )  # fmt: skip
        return out[:, batch["input_ids"].shape[1] :].tolist()

    singles = [new_tokens([request])[0] for request in requests]
    assert all(len(ids) == MAX_NEW for ids in singles)
    batched = [ids for i in range(0, len(requests), 4) for ids in new_tokens(requests[i : i + 4])]
    assert batched == singles

    lines = iter([questions[0]["text"], "How many shapes are there?"])

    def read(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    image = Image.open(data.image_folder / questions[0]["image"]).convert("RGB")
    shown = io.StringIO()
    rounds = chat_loop(engine, image, settings, read=read, out=shown)
    assert len(rounds) == 2 and rounds[0][0] == questions[0]["text"]
    first = engine.generate([Request(image, [(engine.template.user, rounds[0][0])])], settings)
    assert rounds[0][1] == first[0]
    assert shown.getvalue().startswith(f"{engine.template.assistant}: {first[0]}")


def test_readme_lists_every_tested_combination():
    """The README's table of LLM x tower x connector x template names each run of this file."""
    from vitsplit_vlm.vlm.conversation import TEMPLATES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, combo in COMBOS.items():
        assert f"`test_vlm_llms.py[{name}]`" in readme, name
        assert f"`{combo.version}`" in readme, name
    for template in TEMPLATES:
        assert f"`{template}`" in readme, template
