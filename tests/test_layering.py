"""Imports point inward: `core` is ViT-Split alone, `vlm` and `dense` build on it, `eval` and
`serve` on those, and the development package `playground` (tiny models, generated data, the
quickstart) is imported only by the command-line layer, never by a library module."""

from __future__ import annotations

import ast
from pathlib import Path

import vitsplit_vlm

PACKAGE = Path(vitsplit_vlm.__file__).parent
# modules allowed to reach the development package: the entry point, the dense command (for an
# explicit `--preset playground`), the analysis command (its default tiny backbone) and the
# package itself
PLAYGROUND_USERS = ("cli.py", "dense/cli.py", "analysis/cli.py", "playground/")
# package -> the project packages it may import
ALLOWED = {
    "core": {"core"},
    "vlm": {"core", "vlm"},
    "dense": {"core", "dense", "playground"},  # dense/cli.py only, checked below
    "eval": {"core", "vlm", "eval"},
    "serve": {"core", "vlm", "eval", "serve"},
    "analysis": {"core", "vlm", "dense", "analysis", "playground"},  # playground: analysis/cli.py
}
SHARED_DECODER = "images"  # PIL + numpy only: 8-bit RGB of any image, for every layer's loaders
LEAVES = {"quiet", "commands"}  # stdlib-only helpers any layer may use
# safetensors and tqdm: transformers' own dependencies (the feature cache's shards and progress bar)
THIRD_PARTY_FOR_CORE = {"torch", "torchvision", "transformers", "safetensors", "tqdm"}


def _modules() -> list[tuple[Path, str]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        parts = ["vitsplit_vlm", *rel.with_suffix("").parts]
        out.append((path, ".".join(parts[:-1] if rel.name == "__init__.py" else parts)))
    return out


def _imports(path: Path, module: str) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            names |= {f"{prefix}.{alias.name}" for alias in node.names}
    return names


def _project_package(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "vitsplit_vlm" and len(parts) > 1 else None


def test_only_the_command_line_layer_imports_the_playground():
    offenders = []
    for path, module in _modules():
        rel = str(path.relative_to(PACKAGE))
        if rel.startswith(PLAYGROUND_USERS[-1]) or rel in PLAYGROUND_USERS[:-1]:
            continue
        used = {n for n in _imports(path, module) if _project_package(n) == "playground"}
        if used:
            offenders.append((rel, sorted(used)))
    assert not offenders, offenders


def test_library_packages_import_inward_only():
    offenders = []
    for path, module in _modules():
        package = _project_package(module)
        if package not in ALLOWED:
            continue
        rel = str(path.relative_to(PACKAGE))
        for name in _imports(path, module):
            target = _project_package(name)
            if target is None or target in ALLOWED[package] | LEAVES | {SHARED_DECODER}:
                continue
            offenders.append((rel, name))
    assert not offenders, offenders


def test_core_needs_only_torch_and_transformers():
    offenders = []
    for path, module in _modules():
        if _project_package(module) != "core":
            continue
        for name in _imports(path, module):
            top = name.split(".")[0]
            if top in ("vitsplit_vlm", "__future__") or top in THIRD_PARTY_FOR_CORE:
                continue
            if top in __import__("sys").stdlib_module_names:
                continue
            offenders.append((str(path.relative_to(PACKAGE)), name))
    assert not offenders, offenders
