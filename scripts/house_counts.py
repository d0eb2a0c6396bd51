"""Count what makes the code hard to change, so that a refactor can show its effect in numbers.

    python scripts/house_counts.py            # a table on stdout
    python scripts/house_counts.py --json     # the same counts as JSON

Counted over flatness/ and cli/ (the library and the commands):
- functions taking more than 8 parameters (self and cls not counted; *args and **kwargs are),
- import statements inside a function or method body,
- import circles between modules: strongly connected groups in the graph of module imports, late imports
  included (a package's ``__init__`` re-export is followed to the module that defines the name),
- the largest modules, by lines,
- modules without a test file that mirrors them: ``tests/<package>/test_<module>.py`` for
  ``flatness/<package>/<module>.py`` and ``tests/cli/test_<command>.py`` for ``cli/<command>.py``.
"""

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_PARAMETERS = 8


def _modules():
    """{dotted module name: path} for every module of flatness/ and cli/ (cli/ is installed as flatness.cli)."""
    found = {}
    for path in sorted((ROOT / "flatness").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted((ROOT / "cli").rglob("*.py")):
        parts = ("flatness", *path.relative_to(ROOT).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _parameter_count(node):
    arguments = node.args
    names = [a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs]
    names = [name for name in names if name not in ("self", "cls")]
    return len(names) + (arguments.vararg is not None) + (arguments.kwarg is not None)


def _functions(tree):
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _late_imports(tree):
    """Import statements inside function bodies (each counted once, however deeply nested)."""
    late = set()
    for function in _functions(tree):
        for node in ast.walk(function):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                late.add(id(node))
    return len(late)


def _resolve(module, node, is_package):
    """The absolute module an ImportFrom names (relative imports resolved against ``module``)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _import_graph(modules):
    trees = {name: ast.parse(path.read_text()) for name, path in modules.items()}
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    # where a package's __init__ takes each re-exported name from
    reexports = {}
    for package in packages:
        for node in ast.walk(trees[package]):
            if isinstance(node, ast.ImportFrom):
                source = _resolve(package, node, True)
                for alias in node.names:
                    reexports[(package, alias.asname or alias.name)] = source

    def target(name):
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in modules else None

    edges = {name: set() for name in modules}
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found = target(alias.name)
                    if found:
                        edges[name].add(found)
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(name, node, name in packages)
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    if full in modules:
                        edges[name].add(full)
                        continue
                    seen = set()
                    while (source, alias.name) in reexports and source not in seen:
                        seen.add(source)
                        source = reexports[(source, alias.name)]
                    found = target(source)
                    if found:
                        edges[name].add(found)
    for name in edges:
        edges[name].discard(name)
        # the package __init__s re-export; an edge into one is followed above, never counted as a circle
        edges[name] -= packages
    return {name: targets for name, targets in edges.items() if name not in packages}


def _circles(edges):
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, result, counter = {}, {}, set(), [], [], [0]

    def connect(start):
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in edges:
                    continue
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    result.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return sorted(result)


def _mirrored_test(module):
    parts = module.split(".")[1:]  # drop "flatness"
    return ROOT / "tests" / Path(*parts[:-1]) / f"test_{parts[-1]}.py"


def counts():
    """Every count of the module docstring, as a JSON-safe dict."""
    modules = _modules()
    many_parameters, late, sizes, unmirrored = [], 0, [], []
    for name, path in modules.items():
        text = path.read_text()
        tree = ast.parse(text)
        for function in _functions(tree):
            n = _parameter_count(function)
            if n > MAX_PARAMETERS:
                many_parameters.append(f"{name}.{function.name} ({n})")
        late += _late_imports(tree)
        sizes.append((len(text.splitlines()), name))
        if path.name != "__init__.py" and not _mirrored_test(name).exists():
            unmirrored.append(name)
    real_modules = [name for name, path in modules.items() if path.name != "__init__.py"]
    return {
        "modules": len(real_modules),
        "lines": sum(size for size, _ in sizes),
        "functions_over_8_parameters": len(many_parameters),
        "functions_over_8_parameters_list": sorted(many_parameters),
        "imports_inside_functions": late,
        "import_circles": _circles(_import_graph(modules)),
        "largest_modules": [f"{name} ({size})" for size, name in sorted(sizes, reverse=True)[:5]],
        "modules_without_mirrored_test": len(unmirrored),
        "modules_without_mirrored_test_list": unmirrored,
    }


def main(argv=None):
    """Print the counts (``--json`` for machine-readable output)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--list", action="store_true", help="also list the functions and modules counted")
    arguments = parser.parse_args(argv)
    found = counts()
    if arguments.json:
        print(json.dumps(found, indent=1))
        return 0
    print(f"modules (no __init__): {found['modules']}, lines: {found['lines']}")
    print(f"functions over {MAX_PARAMETERS} parameters: {found['functions_over_8_parameters']}")
    print(f"imports inside functions: {found['imports_inside_functions']}")
    print(f"import circles: {len(found['import_circles'])} {found['import_circles']}")
    print(f"largest modules: {', '.join(found['largest_modules'])}")
    print(f"modules without a mirrored test file: {found['modules_without_mirrored_test']} of {found['modules']}")
    if arguments.list:
        print("\n".join(found["functions_over_8_parameters_list"]))
        print("\n".join(found["modules_without_mirrored_test_list"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
