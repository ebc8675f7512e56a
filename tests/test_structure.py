"""The package's layers, read from its import graph: the primitives sit below the training loop and the
studies built on them; ``import govlab.config`` stays small."""

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "govlab"
PRIMITIVES = ("govlab.routing", "govlab.memorization", "govlab.provenance", "govlab.data", "govlab.models")
ABOVE = ("govlab.studies", "govlab.cli", "govlab.bench", "govlab.explore", "govlab.train", "govlab.run")
# what a config needs: the config sections of each part, the presets, errors and file helpers
CONFIG_MODULES = {"govlab", "govlab._lazy", "govlab.config", "govlab.data", "govlab.data.records",
                  "govlab.data.world", "govlab.errors", "govlab.io", "govlab.memorization",
                  "govlab.memorization.config", "govlab.models", "govlab.models.config", "govlab.presets",
                  "govlab.provenance", "govlab.provenance.config", "govlab.routing", "govlab.routing.config"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def within(name: str, packages) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def imports(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    """Every module a file (or ``text`` as that file) imports, at any depth (inside functions too),
    relative imports resolved; ``from a import b`` counts as ``a`` and as ``a.b`` (b may be a module)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text() if text is None else text, str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            out += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def test_the_import_parser_sees_imports_inside_functions():
    text = "def f():\n    from govlab.train import Trainer\n    from . import hook\n    import govlab.run\n"
    found = {m for _, m in imports(PACKAGE / "routing" / "__init__.py", text)}
    assert {"govlab.train", "govlab.train.Trainer", "govlab.routing.hook", "govlab.run"} <= found


def test_primitives_import_nothing_from_the_layers_above_them():
    files = [p for p in sorted(PACKAGE.rglob("*.py")) if within(module_name(p), PRIMITIVES)]
    assert len(files) > 20  # the walk found the packages
    bad = [f"{p.relative_to(PACKAGE.parent)}:{line} imports {m}"
           for p in files for line, m in imports(p) if within(m, ABOVE)]
    assert not bad, "\n".join(bad)


def test_import_govlab_config_loads_only_the_config_sections():
    code = ("import json, sys, govlab.config; "
            "print(json.dumps([sorted(m for m in sys.modules if m.startswith('govlab')), 'torch' in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded, torch = json.loads(proc.stdout)
    assert set(loaded) <= CONFIG_MODULES, sorted(set(loaded) - CONFIG_MODULES)
    assert not torch


def test_package_names_still_load_on_first_use():
    code = ("import govlab.provenance.attest, govlab.routing as r, govlab.provenance as p, govlab.models as m; "
            "from govlab.provenance import attest; from govlab.routing import ops, attach; "
            "assert callable(attest) and callable(p.attest) and callable(attach) and r.RoutingConfig; "
            "assert m.ModelConfig is __import__('govlab.models.unet', fromlist=['x']).ModelConfig; "
            "assert set(r.__all__) <= set(dir(r)); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
