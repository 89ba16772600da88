"""The shape of the code: one home per concept (no import cycles, modules of readable
size, no family branches outside a family's own modules) and a README whose Python
examples still run against the package's names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

import onceforall

PACKAGE = Path(onceforall.__file__).resolve().parent
README = PACKAGE.parents[1] / "README.md"
MAX_LINES = 450  # "about 400": a module past it is asking to be split along a seam

# A family's own modules may name its classes; nothing else may test for them.
FAMILY_MODULES = {
    "arch/mbconv.py",
    "arch/mbconv_genes.py",
    "arch/resnet.py",
    "arch/resnet_genes.py",
    "models/mbconv.py",
    "models/resnet.py",
    "models/registry.py",
    "compat/mbconv.py",
    "compat/resnet.py",
    "latency/parts.py",  # the MBConv family's per-block latency parts
}
FAMILY_CLASSES = {
    "MBConvArch",
    "Arch",
    "MBConvSpace",
    "MBConvNetConfig",
    "MBConvSubnet",
    "OFAMBConvNet",
    "ResNetArch",
    "ResNetSpace",
    "OpenResNetSpace",
    "ResNetConfig",
    "ResNetSubnet",
    "OFAResNet",
}
FAMILY_TAGS = {"mbconv", "resnet", "mobilenet_v3", "mbconv-onehot", "resnet-onehot"}


def _modules() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (imports for type
    hints only, which never run)."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports when it runs, at module level or
    inside functions (a lazy import still ties the two modules together)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" for alias in node.names]
            if not name.startswith(module + "."):  # an ancestor package is loaded already
                targets.append(module)
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def test_import_graph_has_no_cycles() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_modules_stay_readable_in_size() -> None:
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def _family_branches(path: Path) -> list[str]:
    """``isinstance``/``issubclass`` tests against a family's classes, and comparisons
    with a family's tag, in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in (
            "isinstance",
            "issubclass",
        ):
            names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
            names |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
            if names & FAMILY_CLASSES:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.Compare):
            constants = {
                c.value
                for c in ast.walk(node)
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            }
            if constants & FAMILY_TAGS:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_code_outside_a_family_branches_on_the_family() -> None:
    branches = {}
    for path in PACKAGE.rglob("*.py"):
        relative = str(path.relative_to(PACKAGE))
        if relative not in FAMILY_MODULES and (found := _family_branches(path)):
            branches[relative] = found
    assert not branches, f"family branches outside the families: {branches}"


def test_the_family_check_sees_a_branch(tmp_path) -> None:
    # The check above must be able to fail: it finds the kind of branch it forbids.
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f(net, spec):\n"
        "    if isinstance(net.space, MBConvSpace):\n"
        "        return 1\n"
        "    return spec['family'] == 'resnet'\n"
    )
    assert len(_family_branches(probe)) == 2


def _readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_first_example_runs() -> None:
    """The README's first example, as written, on a random image."""
    block = _readme_blocks()[0]
    namespace = {"images": torch.randn(2, 3, 224, 224)}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["logits"].shape == (2, 1000)
    assert isinstance(namespace["subnet"], torch.nn.Module)


@pytest.mark.parametrize("index", range(1, 4))
def test_readme_examples_import_what_exists(index: int) -> None:
    """Every name the README's other examples import exists where they import it from
    (running them needs a trained run and the authors' files)."""
    blocks = _readme_blocks()
    assert len(blocks) >= 4, "the README's Python examples moved"
    tree = ast.parse(blocks[index])
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert imports
    exec(compile(ast.Module(imports, type_ignores=[]), "README.md", "exec"), {})  # noqa: S102
