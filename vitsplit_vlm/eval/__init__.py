"""Benchmarks for the LLaVA variant: VQAv2, POPE and MMBench (pure Python, no torch).

Each benchmark is one small task class in its own module, built the same way:

- ``build_prompt(...)``: the text the model is asked (LLaVA-1.5's evaluation prompts);
- ``parse(...)``: a raw model answer to what the benchmark compares (normalised VQA answer,
  yes/no, option letter);
- ``score(answers, ...)``: a small report dataclass with ``to_dict()`` for JSON;
- ``convert(answers, ...)`` where a benchmark is scored by a server (VQAv2, MMBench).

They share the strict readers and the atomic writer of :mod:`vitsplit_vlm.eval.io` (every bad input
is one :class:`~vitsplit_vlm.eval.io.EvalInputError`) and one command-line runner,
:mod:`vitsplit_vlm.eval.cli` (``vitsplit-vlm eval <action>``). Answers files are LLaVA's JSON lines
(``{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}``, plus ``round_id`` for
MMBench), so answers written by LLaVA's own scripts score here unchanged.

Modules: :mod:`.normalize` (EvalAI / official VQA answer normalisation), :mod:`.vqav2`,
:mod:`.pope`, :mod:`.mmbench`, :mod:`.io`, :mod:`.cli`. Two modules use the model (torch is
imported only when they run): :mod:`.answer` (``eval answer`` / ``eval merge``: LLaVA's answer
generation, batched through ``VLMEngine``) and :mod:`.lmms_plugin` (the lmms-eval adapter).
"""

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
"""LLaVA-1.5's instruction for short-answer benchmarks (VQAv2, POPE), on its own line."""


def with_instruction(question: str, instruction: str) -> str:
    """``question`` with ``instruction`` on a new line, unless the question already ends with it
    (LLaVA's ``llava_*.jsonl`` question files carry it already)."""
    question = question.rstrip("\n")
    return question if question.endswith(instruction) else f"{question}\n{instruction}"
