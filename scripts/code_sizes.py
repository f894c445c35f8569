"""Module and function sizes: python3 scripts/code_sizes.py [ROOT] (modules over 500 lines, functions over 60)."""
import ast
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
mods, funcs = [], []
for p in sorted((root / "lkmedia").rglob("*.py")):
    if p.name.endswith("_pb2.py"):
        continue
    text = p.read_text()
    n = len(text.splitlines())
    mods.append((n, str(p.relative_to(root))))
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            size = node.end_lineno - node.lineno + 1
            funcs.append((size, f"{p.relative_to(root)}:{node.name}"))
mods.sort(reverse=True); funcs.sort(reverse=True)
print("modules over 500 lines:", [(n, m) for n, m in mods if n > 500])
print("largest modules:", mods[:5])
print("functions over 60 lines:", [(n, f) for n, f in funcs if n > 60])
print("modules:", len(mods), "functions:", len(funcs), "mean function", round(sum(n for n, _ in funcs) / len(funcs), 1))
