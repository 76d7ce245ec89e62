#!/usr/bin/env python3
"""Module dependency graph of a Rust crate's src/ and a cycle check: `.ci/run` fails on a cycle.

Usage: module-cycles.py [--strict] CRATE/src [CRATE/src ...]

By default a module may use its ancestors' items (the module tree is containment, and Rust's
privacy lets a child see its parent): edges to an ancestor and `mod` declarations are left out,
so a cycle is one between modules neither of which contains the other (a <-> b siblings, or
a::x -> b -> a). `--strict` keeps every edge (a lib.rs that both defines types its children
use and re-exports theirs is then a cycle).

Nodes: one per module file (lib.rs = `crate`, a/mod.rs = `crate::a`, a/b.rs = `crate::a::b`),
plus `<file>::tests` for an inline `#[cfg(test)] mod tests { ... }` (its `super::` is the file;
it has edges out, to what the tests use, but none in, since no other code depends on it).
Edges, from a module to a module:
  * `mod x;` declarations (parent -> child), so a child that imports anything from its parent
    (e.g. through the parent's `pub use`) closes a cycle;
  * every path `crate::...`, `super::...`, `self::...`, and paths starting with the name of a
    child module (2018 relative paths, e.g. `pub use sink::Sink;`), in `use` trees (braces
    expanded) and inline in code, resolved to the longest prefix that is a known module.
Comments are stripped first (doc links do not count). Exit status 1 when there is a cycle.
"""
import os, re, sys

args = sys.argv[1:]
strict = '--strict' in args
roots = [a for a in args if a != '--strict']

def module_of(rel):
    parts = rel[:-3].split('/')
    if parts == ['lib']:
        return ('crate',)
    if parts[-1] == 'mod':
        parts = parts[:-1]
    return ('crate',) + tuple(parts)

def check(root):
    global modules
    files = {}
    for d, _, names in os.walk(root):
        for n in names:
            if n.endswith('.rs'):
                rel = os.path.relpath(os.path.join(d, n), root)
                files[module_of(rel)] = rel
    modules = set(files)

    def strip_comments(text):
        text = re.sub(r'/\*.*?\*/', '', text, flags=re.S)
        out = []
        for line in text.split('\n'):
            # drop // comments outside string literals (good enough for this code base)
            in_str = False; i = 0; cut = len(line)
            while i < len(line):
                c = line[i]
                if c == '"' and (i == 0 or line[i-1] != '\\'):
                    in_str = not in_str
                elif not in_str and line.startswith('//', i):
                    cut = i; break
                i += 1
            out.append(line[:cut])
        return '\n'.join(out)

    def expand_use(tree):
        """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]"""
        tree = tree.strip()
        m = re.match(r'^(.*?)\{(.*)\}$', tree, re.S)
        if not m:
            return [re.sub(r'\s+as\s+\w+$', '', tree).strip()]
        prefix, inner = m.group(1), m.group(2)
        items, depth, cur = [], 0, ''
        for c in inner:
            if c == '{': depth += 1
            if c == '}': depth -= 1
            if c == ',' and depth == 0:
                items.append(cur); cur = ''
            else:
                cur += c
        items.append(cur)
        out = []
        for it in items:
            if it.strip():
                out += expand_use(prefix + it.strip())
        return out

    def resolve(path, here):
        """Absolute module (tuple) for a path used in module `here`, or None (std, external...)."""
        segs = [s for s in path.split('::') if s]
        if not segs:
            return None
        if segs[0] == 'crate':
            base, rest = ('crate',), segs[1:]
        elif segs[0] in ('super', 'self'):
            base = here
            while segs and segs[0] in ('super', 'self'):
                if segs[0] == 'super':
                    base = base[:-1]
                segs = segs[1:]
            rest = segs
        elif here + (segs[0],) in modules:
            base, rest = here, segs
        else:
            return None
        best = base if base in modules else None
        cur = base
        for s in rest:
            cur = cur + (s,)
            if cur in modules:
                best = cur
            else:
                break
        return best

    PATH = re.compile(r'\b((?:crate|super|self|[a-z_][a-z0-9_]*)(?:::[A-Za-z_][A-Za-z0-9_]*)+)')

    def edges_of(code, here, file_mod):
        out = set()
        for m in re.finditer(r'\b(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;', code):
            if strict:
                out.add(here + (m.group(1),))
        uses = re.finditer(r'\buse\s+([^;]+);', code, re.S)
        spans = []
        for m in uses:
            spans.append(m.span())
            for p in expand_use(m.group(1)):
                r = resolve(p, here)
                if r: out.add(r)
        rest = code
        for a, b in reversed(spans):
            rest = rest[:a] + rest[b:]
        for m in PATH.finditer(rest):
            r = resolve(m.group(1), here)
            if r: out.add(r)
        return out

    graph = {}
    for mod, rel in sorted(files.items()):
        code = strip_comments(open(os.path.join(root, rel)).read())
        m = re.search(r'#\[cfg\(test\)\]\s*mod\s+tests\s*\{', code)
        main, tests = (code[:m.start()], code[m.end():]) if m else (code, None)
        graph.setdefault(mod, set()).update(edges_of(main, mod, mod))
        if tests is not None:
            tmod = mod + ('tests',)
            graph.setdefault(tmod, set()).update(edges_of(tests, tmod, mod))
            # No edge file -> tests: nothing outside a test depends on it, and its `use super::*`
            # is the file itself.
    for k in graph:
        graph[k].discard(k)
        if not strict:
            # A module's own tests (`x::tests`) count as x, whose ancestors it may use too.
            owner = k[:-1] if k[-1] == 'tests' else k
            graph[k] = {v for v in graph[k] if v != owner[:len(v)]}

    name = lambda m: '::'.join(m)
    for k in sorted(graph) if os.environ.get('VERBOSE') else []:
        print(f"{name(k):40} -> {', '.join(sorted(name(v) for v in graph[k])) or '(nothing)'}")

    # Tarjan's strongly connected components
    index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]
    sys.setrecursionlimit(10000)
    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            sccs.append(comp)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = [c for c in sccs if len(c) > 1]
    print()
    if cycles:
        for c in cycles:
            print("CYCLE among:", ', '.join(sorted(name(m) for m in c)))
        return True
    print(f"no cycle: {len(graph)} modules, {sum(len(v) for v in graph.values())} edges")
    return False


failed = False
for root in roots:
    print(f"== {root}")
    failed |= check(root)
sys.exit(1 if failed else 0)
