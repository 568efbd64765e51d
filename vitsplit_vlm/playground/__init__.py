"""Small offline data sets made by the project (synthetic scenes for the tiny VLM and dense heads).

`shapes` renders scenes of coloured shapes and writes them in LLaVA's pretrain / instruct /
evaluation formats; `cli` is the `vitsplit-vlm make-data` command.
"""
