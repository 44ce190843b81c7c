"""Command lines stand on the library, never the other way: no library module
of asl_jax imports a command-line module (one with a `__main__` block), at
the top or inside a function."""

import ast
import pathlib

from conftest import ROOT

PACKAGE = pathlib.Path(ROOT) / "asl_jax"


def _module(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST) -> set[str]:
  """Every asl_jax module a module's code imports, wherever the import is."""
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      out.add(node.module)
      out.update(f"{node.module}.{a.name}" for a in node.names)  # from asl_jax import gate
  return {m for m in out if m.split(".")[0] == "asl_jax"}


def _modules() -> dict[str, ast.AST]:
  return {_module(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def _command_lines(modules: dict[str, ast.AST]) -> set[str]:
  """Modules with an `if __name__ == "__main__":` block."""
  def is_main(node):
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")
  return {name for name, tree in modules.items() if any(is_main(n) for n in tree.body)}


def test_no_library_module_imports_a_command_line():
  modules = _modules()
  clis = _command_lines(modules)
  # The scan finds the command lines (an empty set would pass vacuously).
  assert {"asl_jax.main", "asl_jax.gate", "asl_jax.evaluate", "asl_jax.embed", "asl_jax.find",
          "asl_jax.export", "asl_jax.benchmark.__main__"} <= clis
  bad = {name: sorted(_imported(tree) & clis) for name, tree in modules.items()
         if name not in clis and _imported(tree) & clis}
  assert not bad, f"library modules importing command lines: {bad}"


def test_the_scan_sees_function_level_imports():
  tree = ast.parse("def f():\n  from asl_jax import gate\n  import asl_jax.evaluate as e\n")
  assert _imported(tree) >= {"asl_jax.gate", "asl_jax.evaluate"}
