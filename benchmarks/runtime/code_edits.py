"""A code-editing set built offline from Python's own standard library: "rename X to Y in this function".

The answers copy their prompt but for one name, the case prompt lookup (`--draft prompt`) is
for. Functions come from a fixed list of pure-Python modules of the running interpreter, in
source order, 6 to 20 lines long; the renamed name is the function's first argument (not
self or cls), the new name `new_<old>`. The reference answer is the function with every NAME
token equal to the old name replaced (tokenize), so exact match can be read off too. The prompt
is written out in SmolLM2's chat format (CHATML): a text-only bundle's template is the bare
prompt, and SmolLM2-135M-Instruct answers the bare instruction with prose, in its chat format
with the function.

    python -m benchmarks.runtime.code_edits --count 6     # prints the set
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import io
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path

MODULES = ("textwrap", "shlex", "fnmatch", "colorsys", "heapq", "bisect", "calendar", "glob", "netrc", "difflib")
CHATML = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
LINES = (6, 20)  # a function's length: long enough to copy, short enough to answer in ~150 tokens


@dataclass(frozen=True)
class Edit:
    """One task: the prompt, the function it edits and the reference answer."""

    module: str
    function: str
    old: str  # the name renamed
    new: str
    prompt: str
    answer: str


def rename(source: str, old: str, new: str) -> str:
    """`source` with every NAME token `old` replaced by `new` (strings and comments untouched).

    >>> rename("def f(a):\\n    return a + 'a'\\n", "a", "b")
    "def f(b):\\n    return b + 'a'\\n"
    """
    tokens = [
        t._replace(string=new) if t.type == tokenize.NAME and t.string == old else t
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
    ]
    return tokenize.untokenize(tokens)


def _functions(module: str):
    path = Path(importlib.util.find_spec(module).origin)
    text = path.read_text()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef) and LINES[0] <= node.end_lineno - node.lineno + 1 <= LINES[1]:
            names = [a.arg for a in node.args.args if a.arg not in ("self", "cls")]
            if names and len(names[0]) > 1 and not node.decorator_list:
                lines = text.splitlines(keepends=True)[node.lineno - 1 : node.end_lineno]
                yield node.name, names[0], textwrap.dedent("".join(lines))


def build(count: int, template: str = CHATML) -> list[Edit]:
    """The first function of each module in MODULES that qualifies, then the second of each ..., `count` in all.

    >>> [e.function for e in build(2)]  # doctest: +SKIP
    ['__init__', 'split']
    """
    queues = {m: list(_functions(m)) for m in MODULES}
    edits: list[Edit] = []
    for i in range(max(map(len, queues.values()))):
        for module, functions in queues.items():
            if i < len(functions) and len(edits) < count:
                name, old, source = functions[i]
                new = f"new_{old}"
                prompt = template.format(
                    f"Rename the variable `{old}` to `{new}` in this Python function. "
                    f"Reply with the complete updated function only.\n\n```python\n{source}```"
                )
                edits.append(Edit(module, name, old, new, prompt, rename(source, old, new)))
    return edits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=6)
    for edit in build(p.parse_args().count):
        print(f"--- {edit.module}.{edit.function}: {edit.old} -> {edit.new}\n{edit.prompt}\n")


if __name__ == "__main__":
    main()
