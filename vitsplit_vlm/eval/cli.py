"""``vitsplit-vlm eval <action>``: scorers and submission converters (the shared runner).

Actions live in one registry, :data:`ACTIONS` (name -> `Command`). An
action reads its inputs through :mod:`vitsplit_vlm.eval.io`, asks its task class to score or
convert, and returns a JSON-able summary that the runner prints. Any
:class:`~vitsplit_vlm.eval.io.EvalInputError` is printed as one line on stderr with exit status 2;
outputs are written atomically, so a failed run writes nothing. ``answer`` (the only action that
loads the model; see :mod:`vitsplit_vlm.eval.answer`) writes LLaVA-style answers files that the
other actions read.

Examples::

    vitsplit-vlm eval answer --task vqav2 --model-path checkpoints/vitsplit-tiny \
        --question-file llava_vqav2_mscoco_test-dev2015.jsonl --image-folder test2015 \
        --answers-file answers/4_0.jsonl --conv-mode vicuna_v1 --temperature 0 \
        --batch-size 8 --num-chunks 4 --chunk-idx 0
    vitsplit-vlm eval answer --task mmbench --model-path DIR --question-file mmbench_dev.tsv \
        --answers-file answers/mmbench.jsonl --all-rounds
    vitsplit-vlm eval merge --inputs answers/4_0.jsonl answers/4_1.jsonl ... \
        --questions llava_vqav2_mscoco_test-dev2015.jsonl --out answers/merge.jsonl

    vitsplit-vlm eval score-vqav2 --answers A.jsonl --annotations v2_mscoco_val2014_annotations.json
    vitsplit-vlm eval convert-vqav2 --answers A.jsonl \\
        --questions llava_vqav2_mscoco_test2015.jsonl --out upload.json
    vitsplit-vlm eval score-pope --answers A.jsonl --questions llava_pope_test.jsonl \\
        --question-dir pope/coco
    vitsplit-vlm eval score-mmbench --answers A.jsonl --tsv mmbench_dev_20230712.tsv
    vitsplit-vlm eval convert-mmbench --answers A.jsonl --tsv mmbench_dev_20230712.tsv \\
        --out submission.xlsx
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vitsplit_vlm.commands import Command, add_subcommands, run_subcommand
from vitsplit_vlm.eval import answer, mmbench, pope, vqav2
from vitsplit_vlm.eval.io import EvalInputError, read_answers


def _warn(action: str, message: str) -> None:
    print(f"vitsplit-vlm eval {action}: warning: {message}", file=sys.stderr)


def _score_vqav2_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--answers", required=True, help="answers JSONL (LLaVA model_vqa_loader)")
    p.add_argument("--annotations", required=True, help="v2_mscoco_val2014_annotations.json")
    p.add_argument(
        "--questions",
        help="questions to score (official JSON or LLaVA JSONL); default: every annotated question",
    )
    p.add_argument(
        "--protocol",
        choices=sorted(vqav2.PROTOCOLS),
        default="llava",
        help="which reference's normalisation to follow (see vitsplit_vlm.eval.vqav2)",
    )


def _score_vqav2(args: argparse.Namespace) -> dict[str, Any]:
    annotations = vqav2.load_annotations(args.annotations)
    ids = vqav2.load_question_ids(args.questions) if args.questions else None
    report = vqav2.VQAv2Task(protocol=args.protocol).score(
        read_answers(args.answers),
        annotations,
        question_ids=ids,
        answers_path=args.answers,
        questions_path=args.questions or args.annotations,
    )
    return report.to_dict()


def _convert_vqav2_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--answers", required=True, help="answers JSONL (LLaVA model_vqa_loader)")
    p.add_argument(
        "--questions",
        required=True,
        help="the split to upload: llava_vqav2_mscoco_test2015.jsonl (or test-dev, "
        "or official questions JSON); every question is written",
    )
    p.add_argument("--out", required=True, help="EvalAI upload JSON to write")


def _convert_vqav2(args: argparse.Namespace) -> dict[str, Any]:
    ids = vqav2.load_question_ids(args.questions)
    submission = vqav2.VQAv2Task().convert(
        read_answers(args.answers), ids, answers_path=args.answers, questions_path=args.questions
    )
    vqav2.write_submission(submission, args.out)
    if submission.num_missing:
        _warn(
            "convert-vqav2",
            f"{submission.num_missing} of {len(ids)} questions have no "
            'answer; written as "" (as LLaVA does)',
        )
    return {
        "out": args.out,
        "num_questions": len(ids),
        "num_answered": len(ids) - submission.num_missing,
        "num_missing": submission.num_missing,
    }


def _score_pope_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--answers",
        required=True,
        nargs="+",
        help="answers JSONL; one for all questions, or one per question file (same order)",
    )
    p.add_argument(
        "--questions",
        nargs="+",
        default=[],
        help="coco_pope_<category>.json files, or LLaVA's llava_pope_test.jsonl",
    )
    p.add_argument(
        "--question-dir",
        help="folder of coco_pope_<category>.json: the labels for llava_pope_test.jsonl"
        ", or (without --questions) the questions themselves, sorted by name",
    )


def _score_pope(args: argparse.Namespace) -> dict[str, Any]:
    questions = pope.load_questions(
        args.questions, label_dir=args.question_dir, num_answer_files=len(args.answers)
    )
    answers = [read_answers(path) for path in args.answers]
    report = pope.PopeTask().score(questions, answers, answers_paths=args.answers)
    return report.to_dict()


def _mmbench_args(p: argparse.ArgumentParser, *, out: bool) -> None:
    p.add_argument(
        "--answers",
        required=True,
        help="answers JSONL (LLaVA model_vqa_mmbench, with or without --all-rounds)",
    )
    p.add_argument("--tsv", required=True, help="MMBench TSV, e.g. mmbench_dev_20230712.tsv")
    if out:
        p.add_argument(
            "--out", required=True, help="submission .xlsx (needs openpyxl), .tsv or .csv"
        )


def _score_mmbench(args: argparse.Namespace) -> dict[str, Any]:
    questions = mmbench.load_questions(args.tsv)
    report = mmbench.MMBenchTask().score(
        questions,
        read_answers(args.answers, rounds=True),
        answers_path=args.answers,
        tsv_path=args.tsv,
    )
    return report.to_dict()


def _convert_mmbench(args: argparse.Namespace) -> dict[str, Any]:
    suffix = mmbench.check_submission_path(args.out)
    submission = mmbench.MMBenchTask().convert(
        args.tsv, read_answers(args.answers, rounds=True), answers_path=args.answers
    )
    mmbench.write_submission(submission, args.out)
    if submission.num_missing:
        _warn(
            "convert-mmbench",
            f"{submission.num_missing} of {len(submission.rows)} rows have "
            "no answer; their prediction is empty (as LLaVA leaves it)",
        )
    if submission.ignored_rounds:
        _warn(
            "convert-mmbench",
            f"{submission.ignored_rounds} --all-rounds answers with "
            "round_id > 0 are not uploaded (the table has one prediction per row)",
        )
    return {
        "out": args.out,
        "format": suffix.lstrip("."),
        "num_rows": len(submission.rows),
        "num_missing": submission.num_missing,
        "ignored_rounds": submission.ignored_rounds,
    }


def _answer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, choices=answer.TASKS)
    p.add_argument("--model-path", required=True, type=Path, help="saved model folder")
    p.add_argument(
        "--question-file",
        required=True,
        type=Path,
        help="LLaVA question JSONL (vqav2, pope) or MMBench TSV (mmbench)",
    )
    p.add_argument("--image-folder", type=Path, help="images of the question file (not mmbench)")
    p.add_argument("--answers-file", required=True, type=Path, help="answers JSONL to write")
    p.add_argument(
        "--conv-mode",
        help="conversation template; must equal the model's saved conv_template (default: it)",
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--top-p", "--top_p", dest="top_p", type=float, help="with --temperature > 0")
    p.add_argument("--batch-size", type=int, default=8, help="requests per generate call")
    p.add_argument("--num-chunks", type=int, default=1, help="split the questions in N chunks")
    p.add_argument("--chunk-idx", type=int, default=0, help="answer chunk K (0-based)")
    p.add_argument(
        "--all-rounds", action="store_true", help="mmbench: every option rotation (round_id)"
    )
    p.add_argument(
        "--single-pred-prompt",
        action="store_true",
        help="mmbench: accepted for LLaVA's scripts; the letter instruction is always asked",
    )
    p.add_argument("--lang", choices=sorted(mmbench.INSTRUCTIONS), default="en", help="mmbench")
    p.add_argument(
        "--max-new-tokens",
        "--max_new_tokens",
        dest="max_new_tokens",
        type=int,
        help="default: LLaVA's (128; mmbench 1024)",
    )
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _answer(args: argparse.Namespace) -> dict[str, Any]:
    request = answer.AnswerRequest(
        task=args.task,
        model_path=args.model_path,
        question_file=args.question_file,
        image_folder=args.image_folder,
        answers_file=args.answers_file,
        conv_mode=args.conv_mode,
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=args.batch_size,
        num_chunks=args.num_chunks,
        chunk_idx=args.chunk_idx,
        all_rounds=args.all_rounds,
        max_new_tokens=args.max_new_tokens,
        lang=args.lang,
        device=args.device,
        progress=not args.no_progress,
    )
    return answer.answer(request)


def _merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inputs", required=True, nargs="+", type=Path, help="chunk answer files")
    p.add_argument("--out", required=True, type=Path, help="merged answers JSONL to write")
    p.add_argument(
        "--questions",
        type=Path,
        help="the question file (JSONL or MMBench TSV): check every question is answered",
    )


def _merge(args: argparse.Namespace) -> dict[str, Any]:
    return answer.merge(args.inputs, args.out, questions=args.questions)


ACTIONS: dict[str, Command] = {
    "answer": Command(
        "answer a question file with a model (LLaVA's format)", _answer_args, _answer
    ),
    "merge": Command("concatenate chunk answer files, checking ids", _merge_args, _merge),
    "score-vqav2": Command(
        "VQAv2 soft accuracy against annotations", _score_vqav2_args, _score_vqav2
    ),
    "convert-vqav2": Command("VQAv2 EvalAI upload file", _convert_vqav2_args, _convert_vqav2),
    "score-pope": Command(
        "POPE accuracy/precision/recall/F1 per category", _score_pope_args, _score_pope
    ),
    "score-mmbench": Command(
        "MMBench circular and vanilla accuracy (rule matching, no GPT)",
        lambda p: _mmbench_args(p, out=False),
        _score_mmbench,
    ),
    "convert-mmbench": Command(
        "MMBench submission table", lambda p: _mmbench_args(p, out=True), _convert_mmbench
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One subcommand per entry of :data:`ACTIONS`."""
    add_subcommands(parser, ACTIONS, dest="action")


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; print its JSON summary (0) or its input error (2)."""
    try:
        summary = run_subcommand(args, ACTIONS, dest="action")
    except EvalInputError as err:
        print(f"vitsplit-vlm eval {args.action}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0
