"The m2df import graph: acyclic, and no m2df module imports another inside a function (issue #21)."
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent/'m2df'

# (importer, imported) pairs allowed to stay function-level, with the reason for each: none is needed.
FUNCTION_LEVEL_ALLOWED = {}

def module_name(path):
    "Dotted module name of a file under `m2df/`."
    parts = list(path.relative_to(PKG.parent).with_suffix('').parts)
    if parts[-1] == '__init__': parts = parts[:-1]
    return '.'.join(parts)

def m2df_modules():
    "Every module of the package, by dotted name -> parsed AST (nbdev's _modidx left out)."
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PKG.rglob('*.py'))
            if p.name != '_modidx.py'}

def imported_names(node, importer, known):
    "The m2df modules one import statement names (a `from m2df.x import y` names m2df.x.y when that is a module)."
    if isinstance(node, ast.Import): return [a.name for a in node.names if a.name.split('.')[0] == 'm2df']
    if node.level:  # relative import: resolve against the importer's package
        base = importer.split('.')[:-node.level] if not importer.endswith('__init__') else importer.split('.')
        mod = '.'.join(base + ([node.module] if node.module else []))
    else: mod = node.module or ''
    if mod.split('.')[0] != 'm2df': return []
    subs = [f'{mod}.{a.name}' for a in node.names if f'{mod}.{a.name}' in known]
    return subs or [mod]

def is_main_guard(node) -> bool:
    "`if __name__ == '__main__':` -- code that runs only when the file is the program, as the module `__main__`."
    t = node.test if isinstance(node, ast.If) else None
    if isinstance(t, ast.BoolOp) and isinstance(t.op, ast.And): t = t.values[0]
    return (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id == '__name__'
            and any(isinstance(c, ast.Constant) and c.value == '__main__' for c in t.comparators))

def import_edges():
    "(importer, imported, function_level) for every import of an m2df module by an m2df module."
    mods = m2df_modules(); edges = []
    for name, tree in mods.items():
        in_function, in_main = set(), set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                in_function.update(id(n) for n in ast.walk(fn) if n is not fn)
        # `python -m m2df.learner` runs the file as `__main__`, a module apart from m2df.learner: what its main guard
        # imports (m2df.cli, for `--help`) is imported by the program, not by m2df.learner, so it is no edge of the graph
        for guard in tree.body:
            if isinstance(guard, ast.If) and is_main_guard(guard): in_main.update(id(n) for n in ast.walk(guard))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in in_main:
                for imp in imported_names(node, name, mods):
                    if imp != name: edges.append((name, imp, id(node) in in_function))
    return edges

def find_cycle(edges):
    "One cycle of the directed graph as a list of modules, or None."
    graph = {}
    for a, b, _ in edges: graph.setdefault(a, set()).add(b)
    state, stack = {}, []
    def visit(n):
        state[n] = 'open'; stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 'open': return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)): return c
        state[n] = 'done'; stack.pop()
    for n in sorted(graph):
        if n not in state and (c := visit(n)): return c

def test_find_cycle_finds_one():
    assert find_cycle([('a', 'b', False), ('b', 'c', True), ('c', 'a', False)]) == ['a', 'b', 'c', 'a']
    assert find_cycle([('a', 'b', False), ('b', 'c', True), ('a', 'c', False)]) is None

def test_main_guard_is_recognised():
    guard = lambda src: is_main_guard(ast.parse(src).body[0])
    assert guard("if __name__ == '__main__': main()") and guard("if __name__ == '__main__' and '__file__' in globals(): main()")
    assert not guard("if __name__ == 'm2df': main()") and not guard("if x and __name__ == '__main__': main()")

def test_graph_sees_the_package():
    edges = import_edges()
    assert ('m2df.cli', 'm2df.learner') in {(a, b) for a, b, _ in edges}  # the command line sits on top
    assert len({a for a, _, _ in edges}) >= 15

def test_import_graph_is_acyclic():
    cycle = find_cycle(import_edges())
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)

def test_no_function_level_m2df_imports():
    lazy = sorted({(a, b) for a, b, f in import_edges() if f} - set(FUNCTION_LEVEL_ALLOWED))
    assert not lazy, 'function-level imports of m2df modules: ' + ', '.join(f'{a} -> {b}' for a, b in lazy)
