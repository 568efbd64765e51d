"""The lmms-eval plugin: the adapter's three request types against the engine, and the real
``lmms-eval`` CLI on the playground tasks (its exit code is 0 even on failure: the results JSON
is what counts)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from lmms_eval.api.instance import Instance, unwrap_generation_output  # noqa: E402

from vitsplit_vlm.cli import main  # noqa: E402
from vitsplit_vlm.eval import mmbench, pope  # noqa: E402
from vitsplit_vlm.eval.io import EvalInputError, read_jsonl  # noqa: E402
from vitsplit_vlm.playground.evalsets import write_evalsets  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "eval" / "lmms_tasks"


@pytest.fixture(scope="module")
def model_dir(sharp_vlm_dir):
    return sharp_vlm_dir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder laid out as the repository root: playground/data/eval/... (the tasks' default
    data_files are relative to the current directory)."""
    root = tmp_path_factory.mktemp("lmms")
    write_evalsets(root / "playground" / "data" / "eval", vqav2_scenes=4, pope_images=4,
                   mmbench_scenes=8, photos=False)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def lm(model_dir):
    from vitsplit_vlm.eval.lmms_plugin import VitsplitLlava

    return VitsplitLlava.create_from_arg_string(
        f"pretrained={model_dir},conv_mode=vicuna_v1,batch_size=3",
        {"batch_size": 1, "device": None},
    )


def _task_utils():
    spec = importlib.util.spec_from_file_location("lmms_task_utils", TASKS / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _instance(kind: str, args: tuple, doc_id: int) -> Instance:
    return Instance(kind, args, idx=0, metadata={"task": "t", "doc_id": doc_id, "repeats": 1})


def _pope_docs(workdir, category="random") -> list[dict]:
    path = workdir / "playground/data/eval/pope/annotations" / f"shapes_pope_{category}.json"
    return [r.data for r in read_jsonl(path)]


def _visual(workdir):
    from PIL import Image

    def doc_to_visual(doc):
        return [Image.open(workdir / "playground/data/eval/pope/images" / doc["image"])]

    return doc_to_visual


def test_constructor_checks(model_dir, lm):
    from vitsplit_vlm.eval.lmms_plugin import VitsplitLlava

    assert lm.batch_size == 3  # --model_args win over the CLI's --batch_size default
    with pytest.raises(EvalInputError, match="'vicuna_v1'"):
        VitsplitLlava(pretrained=str(model_dir), conv_mode="plain")
    with pytest.raises(TypeError, match="unknown --model_args colour"):
        VitsplitLlava(pretrained=str(model_dir), colour="red")


def test_generate_until_is_batched_greedy_in_request_order(lm, workdir):
    from vitsplit_vlm.vlm.engine import GenerationSettings, Request

    docs = _pope_docs(workdir)[:7]
    lm.task_dict = {"t": {"test": docs}}
    short = {"max_new_tokens": 4, "temperature": 0, "do_sample": False}
    longer = {**short, "max_new_tokens": 6}
    requests = [
        _instance("generate_until", (("Q: " * (i % 3)) + d["text"], longer if i == 4 else short,
                                     _visual(workdir), i, "t", "test"), i)
        for i, d in enumerate(docs)
    ]  # fmt: skip
    answers = lm.generate_until(requests)
    engine = lm.engine
    for request, answer in zip(requests, answers, strict=True):
        context, kwargs, doc_to_visual, doc_id, _, _ = request.args
        image = doc_to_visual(docs[doc_id])[0]
        settings = GenerationSettings(max_new_tokens=kwargs["max_new_tokens"])
        assert answer == engine.generate([Request(image, [("USER", context)])], settings)[0]
    assert len(set(answers)) > 2
    # `until` cuts the answer at the first stop string
    stop = answers[0][2:4]
    cut = lm.generate_until([_instance("generate_until", (requests[0].args[0],
                            {**short, "until": [stop]}, *requests[0].args[2:]), 0)])  # fmt: skip
    assert cut == [answers[0][: answers[0].index(stop)]]


def test_loglikelihood_is_the_mean_token_loss_of_the_continuation(lm, workdir):
    from vitsplit_vlm.vlm.engine import Request

    docs = _pope_docs(workdir)[:4]
    lm.task_dict = {"t": {"test": docs}}
    continuations = [" Yes", " No", " A", " Red circle"]
    requests = [
        _instance("loglikelihood", (d["text"], c, _visual(workdir), i, "t", "test"), i)
        for i, (d, c) in enumerate(zip(docs, continuations, strict=True))
    ]
    results = [unwrap_generation_output(r)[0] for r in lm.loglikelihood(requests)]
    for doc, continuation, (loss, greedy) in zip(docs, continuations, results, strict=True):
        image = _visual(workdir)(doc)[0]
        [alone] = lm.engine.loglikelihood([Request(image, [("USER", doc["text"])])], [continuation])
        assert loss == pytest.approx(-alone.logprob / alone.num_tokens, abs=1e-4)
        assert greedy == alone.is_greedy and loss > 0
    assert lm.engine.loglikelihood(
        [Request(None, [("USER", "x")])] * 2, [" Red", " Red circle"]
    )[1].num_tokens > 1  # fmt: skip


def test_generate_until_multi_round_follows_doc_to_text(lm, workdir):
    docs = _pope_docs(workdir)[:3]
    lm.task_dict = {"t": {"test": docs}}
    calls = []

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        calls.append((doc["question_id"], round_idx, list(previous_output), previous_round_info))
        if round_idx == 2 or doc["question_id"] == 2 and round_idx == 1:
            return None, None, True, None, None  # question 2 stops after one round
        return [], f"Repeat: {previous_output[-1]}", False, None, {"round": round_idx}

    kwargs = {"max_new_tokens": 3, "temperature": 0, "do_sample": False}
    requests = [
        _instance("generate_until_multi_round",
                  (d["text"], kwargs, _visual(workdir), doc_to_text, i, "t", "test"), i)
        for i, d in enumerate(docs)
    ]  # fmt: skip
    rounds = lm.generate_until_multi_round(requests)
    assert [len(r) for r in rounds] == [2, 1, 2]
    first = lm.generate_until(
        [_instance("generate_until", r.args[:3] + r.args[4:], 0) for r in requests]
    )
    assert [r[0] for r in rounds] == first
    second = lm.generate_until([_instance("generate_until", (f"Repeat: {rounds[0][0]}", kwargs,
                                lambda doc: [], 0, "t", "test"), 0)])  # fmt: skip
    assert rounds[0][1] == second[0]  # round 2: the new context, no image
    assert (1, 2, rounds[0], {"round": 1}) in calls


def _samples(out: Path, task: str) -> list[dict]:
    [path] = sorted(out.rglob(f"*_samples_{task}.jsonl"))
    return sorted((r.data for r in read_jsonl(path)), key=lambda r: r["doc_id"])


def test_lmms_eval_cli_on_the_playground_tasks(model_dir, workdir, tmp_path, capsys):
    """The real CLI, from a folder laid out as the repository. Its POPE answers are
    `vitsplit-vlm eval answer`'s answers to the same questions, scored as the project's scorer
    does; its multiple-choice option losses are the engine's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf"), "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    out = tmp_path / "out"
    command = [
        str(Path(sys.executable).parent / "lmms-eval"), "--model", "vitsplit_llava",
        "--model_args", f"pretrained={model_dir},conv_mode=vicuna_v1,batch_size=2",
        "--tasks", "vitsplit_pope_random,vitsplit_mmbench_mc", "--include_path", str(TASKS),
        "--limit", "8", "--gen_kwargs", "max_new_tokens=3", "--log_samples", "--output_path", str(out),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    found = sorted(out.rglob("*_results.json"))
    assert len(found) == 1, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(found[0].read_text())
    assert results["n-samples"]["vitsplit_pope_random"]["effective"] == 8
    assert results["n-samples"]["vitsplit_mmbench_mc"]["effective"] == 8

    # POPE: the same answers as `vitsplit-vlm eval answer`, the project's metrics
    docs = _pope_docs(workdir)[:8]
    questions, answers = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    questions.write_text("".join(json.dumps(d) + "\n" for d in docs))
    argv = ["eval", "answer", "--task", "pope", "--model-path", str(model_dir), "--question-file",
            str(questions), "--image-folder", str(workdir / "playground/data/eval/pope/images"),
            "--answers-file", str(answers), "--max-new-tokens", "3", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    texts = [r.data["text"] for r in read_jsonl(answers)]
    assert [s["filtered_resps"] for s in _samples(out, "vitsplit_pope_random")] == texts
    labels = [d["label"] for d in docs]
    expected = pope.pope_metrics(
        [(pope.parse_yes_no(t), y) for t, y in zip(texts, labels, strict=True)]
    )
    got = results["results"]["vitsplit_pope_random"]
    for rate in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        assert got[f"pope_{rate},none"] == pytest.approx(getattr(expected, rate)), rate

    # multiple choice: each option's loss is the engine's; lmms-eval picks the lowest
    from vitsplit_vlm.eval.io import read_tsv
    from vitsplit_vlm.vlm.engine import Request, VLMEngine

    tsv = workdir / "playground/data/eval/mmbench/mmbench_playground.tsv"
    rows = mmbench.load_questions(tsv)[:8]
    _, images = read_tsv(tsv, required=["image"], keep={"image"})
    engine = VLMEngine.from_pretrained(model_dir, device="cpu")
    utils = _task_utils()
    hits = []
    for question, cells, sample in zip(
        rows, images, _samples(out, "vitsplit_mmbench_mc"), strict=False
    ):
        image = utils.mmbench_doc_to_visual({"image": cells.cells["image"]})[0]
        letters = list("ABCD"[: len(question.options)])
        request = Request(image, [("USER", mmbench.MMBenchTask().build_prompt(question))])
        scores = engine.loglikelihood([request] * len(letters), [f" {x}" for x in letters])
        losses = [-s.logprob / s.num_tokens for s in scores]
        assert [float(loss) for loss, _ in sample["filtered_resps"]] == pytest.approx(
            losses, abs=1e-4
        )
        hits.append(letters[losses.index(min(losses))] == question.answer)
    assert results["results"]["vitsplit_mmbench_mc"]["acc,none"] == pytest.approx(sum(hits) / 8)
