"""The packages import in one direction: `dashboard` (the project and web edge) and `tasks` (Celery adapters)
may import the domain, `models_app`; the domain never imports either. Inside the domain, the inference
contract (`services/inference.py`, imported by the web side) never imports the engine, which imports MLX, and
the selectors (reads) sit below the services: they import the models and nothing of the domain that writes.
The development harness (`devkit`, with the tests and the benchmark) is imported by `tests/` and `bench/` only:
the product never imports it, nor them."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every module an `import` or `from ... import` names, at any depth (inside functions too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
            for alias in node.names:
                yield f"{node.module}.{alias.name}", node.lineno


def _offences(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line} imports {name}"
        for path in files
        for name, line in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    )


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import dashboardish\n\ndef f():\n    from dashboard.celery import app\n    import dashboard.env\n"
    )
    assert [o.split(":", 1)[1] for o in _offences([sample], ("dashboard",))] == [
        "4 imports dashboard.celery",
        "4 imports dashboard.celery.app",
        "5 imports dashboard.env",
    ]


def test_the_domain_never_imports_the_project_or_the_tasks() -> None:
    files = [p for p in (ROOT / "models_app").rglob("*.py") if "migrations" not in p.parts]
    assert _offences(files, ("dashboard", "tasks")) == []


def test_the_product_never_imports_the_harness_the_tests_or_the_benchmark() -> None:
    # pip does not ship devkit, tests or bench (pyproject.toml's package list): an import of them from the
    # product would work in a checkout and fail in an install.
    files = [
        p
        for package in ("models_app", "dashboard", "tasks")
        for p in (ROOT / package).rglob("*.py")
        if "migrations" not in p.parts
    ]
    assert _offences(files, ("devkit", "tests", "bench")) == []


def test_the_inference_contract_never_imports_the_engine() -> None:
    files = [ROOT / "models_app" / "services" / "inference.py"]
    assert _offences(files, ("models_app.services.engine", "mlx", "mlx_lm")) == []


# What a selector may read besides the rows: the shared Xet store's summary (a listing on disk, no writes).
SELECTOR_IMPORTS = ("models_app.models", "models_app.selectors", "models_app.services.shared_store")


def test_the_selectors_import_only_the_models_and_read_only_helpers() -> None:
    files = list((ROOT / "models_app" / "selectors").rglob("*.py"))
    assert files
    offences = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in files
        for name, line in _imports(path)
        if name.startswith("models_app")
        and not any(name == a or name.startswith(a + ".") for a in SELECTOR_IMPORTS)
    ]
    assert offences == []
