#!/usr/bin/env python3
"""check_layers.py: the folder rules of DESIGN.md, checked.

Layers, bottom to top; a file may use only its own layer and the ones below:
  src/core     errors, config, parameter layout, RNG, clocks (libc only)
  src/kernels  rank-local math primitives on oneDNN
  mpi          every MPI call: the grid, collectives, tp and dp
  src/model    the network's math: forward, backward, heads, adapters, optimizer
  io           every byte on disk: checkpoints, datasets, tokenizers, templates, other tools' files
  src/cmd      the subcommands, on top of everything

Three checks, each printing what breaks it:
  1. includes: every `#include "..."` names its folder and points down (or level);
  2. MPI: no MPI_* call outside mpi/ (types such as MPI_Comm may appear);
  3. modules (a .c file; its .h goes with it): the graph of which module uses
     a symbol another defines, read from the built objects with nm, has no
     cycles and no edge that points up a layer.

usage: check_layers.py BUILD_DIR   (after `make`, which builds BUILD_DIR/*.o)
"""
import collections
import os
import re
import subprocess
import sys

LAYERS = ["src/core", "src/kernels", "mpi", "src/model", "io", "src/cmd"]
# include paths are relative to the repository root or to src/ (-I. -Isrc)
ROOTS = [".", "src"]


def layer_of(path):
    for i, d in reversed(list(enumerate(LAYERS))):
        if path == d or path.startswith(d + "/"):
            return i
    return None


def sources():
    out = []
    for d in LAYERS:
        for dirpath, _, files in os.walk(d):
            if d == "src/cmd" or not dirpath.startswith("src/cmd"):
                out += [os.path.join(dirpath, f) for f in sorted(files) if f.endswith((".c", ".h"))]
    return sorted(set(out))


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(\\.|[^"\\\n])*"', '""', text)


def check_includes(files):
    bad = []
    for f in files:
        me = layer_of(f)
        for n, line in enumerate(open(f, encoding="utf-8"), 1):
            m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
            if not m:
                continue
            inc = m.group(1)
            target = next((os.path.normpath(os.path.join(r, inc)) for r in ROOTS
                           if os.path.isfile(os.path.join(r, inc))), None)
            if "/" not in inc:
                bad.append(f"{f}:{n}: #include \"{inc}\" does not name its folder")
            elif target is None:
                bad.append(f"{f}:{n}: #include \"{inc}\" is not a file of the repository")
            elif layer_of(target) is None or layer_of(target) > me:
                bad.append(f"{f}:{n}: #include \"{inc}\": {LAYERS[me]} may not use {target} (a higher layer)")
    return bad


def check_mpi_calls(files):
    bad = []
    for f in files:
        if f.startswith("mpi/"):
            continue
        for n, line in enumerate(strip_comments(open(f, encoding="utf-8").read()).split("\n"), 1):
            for m in re.finditer(r"\b(P?MPI_[A-Z][a-z0-9_]*)\s*\(", line):
                bad.append(f"{f}:{n}: {m.group(1)} outside mpi/ (call a wrapper of mpi/comm.h)")
    return bad


def module_graph(build, files):
    """module -> {module: [symbols]} for every module that uses another's symbols."""
    defined, used = {}, collections.defaultdict(set)
    for f in files:
        if not f.endswith(".c"):
            continue
        mod = f[:-2]
        obj = os.path.join(build, mod + ".o")
        if not os.path.isfile(obj):
            sys.exit(f"check_layers: {obj} is missing: build first (make)")
        for line in subprocess.check_output(["nm", obj], text=True).splitlines():
            p = line.split()
            if len(p) == 3 and p[1] in "TDBRCV":
                defined[p[2]] = mod
            elif len(p) == 2 and p[0] == "U":
                used[mod].add(p[1])
    graph = collections.defaultdict(lambda: collections.defaultdict(list))
    for mod, syms in used.items():
        for s in sorted(syms):
            if s in defined and defined[s] != mod:
                graph[mod][defined[s]].append(s)
    return graph


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    nodes = sorted(set(graph) | {m for v in graph.values() for m in v})

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            visit(v)
    return out


def check_modules(build, files):
    graph = module_graph(build, files)
    bad = []
    for a, deps in sorted(graph.items()):
        for b, syms in sorted(deps.items()):
            if layer_of(b) > layer_of(a):
                bad.append(f"{a}.c uses {b}.c ({', '.join(syms[:3])}): {LAYERS[layer_of(a)]} may not use a higher layer")
    for comp in cycles(graph):
        edges = [f"{a} -> {b} ({graph[a][b][0]})" for a in comp for b in comp if b in graph.get(a, {})]
        bad.append("modules in a cycle: " + ", ".join(comp) + "\n    " + "\n    ".join(edges))
    n_edges = sum(len(v) for v in graph.values())
    return bad, len(graph), n_edges


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    files = sources()
    problems = check_includes(files) + check_mpi_calls(files)
    mod_problems, n_mods, n_edges = check_modules(build, files)
    problems += mod_problems
    for p in problems:
        print(p)
    print(f"check_layers: {len(files)} files in {len(LAYERS)} layers, {n_edges} module dependencies: "
          f"{len(problems)} problem{'s' if len(problems) != 1 else ''}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
