"""docs/configs.md's field tables, made from alexnet_jax/runs/defaults.py.

Each field of `get_config()` (flattened: `model.use_lrn`), its default as
written there and its comment: the comment lines right above the assignment
and the one at its end. `# --- name ---` lines start a section. The tables
sit in docs/configs.md between BEGIN and END; tests/test_docs.py checks they
are what this makes, so a new or changed field fails there until

    .venv/bin/python tests/config_fields.py

rewrites them.
"""

import ast
import io
import os
import re
import tokenize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS = os.path.join(REPO, "alexnet_jax", "runs", "defaults.py")
CONFIGS_MD = os.path.join(REPO, "docs", "configs.md")
BEGIN = "<!-- fields: made by `.venv/bin/python tests/config_fields.py` from alexnet_jax/runs/defaults.py -->"
END = "<!-- end of fields -->"
SECTION = re.compile(r"^# --- (.+) ---$")


def _dotted(node: ast.expr) -> str | None:
    """`config.model.use_lrn` -> "model.use_lrn"; None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "config" and parts:
        return ".".join(reversed(parts))
    return None


def fields(source: str | None = None) -> list[tuple[str, str, str, str]]:
    """(section, field, default as written, comment) per field, in the file's order."""
    if source is None:
        with open(DEFAULTS) as f:
            source = f.read()
    comments = {}  # line number -> (comment text, whether the line holds only the comment)
    lines = source.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row = token.start[0]
            alone = lines[row - 1].strip().startswith("#")
            comments[row] = (token.string.lstrip("#").strip(), alone)
    sections = {row: SECTION.match(lines[row - 1].strip()) for row, (_, alone) in comments.items() if alone}
    out, section = [], ""
    assignments = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Assign) and len(n.targets) == 1]
    for node in sorted(assignments, key=lambda n: n.lineno):
        name = _dotted(node.targets[0])
        if name is None:
            continue
        for row in range(node.lineno, 0, -1):  # the section this field is in
            if sections.get(row):
                section = sections[row].group(1)
                break
        if isinstance(node.value, ast.Call) and ast.unparse(node.value.func).endswith("ConfigDict"):
            continue  # a sub-config, not a field
        above, row = [], node.lineno - 1
        while row in comments and comments[row][1] and not sections.get(row):
            above.insert(0, comments[row][0])
            row -= 1
        end = [comments[node.lineno][0]] if node.lineno in comments and not comments[node.lineno][1] else []
        text = " ".join(above + end)
        out.append((section, name, ast.get_source_segment(source, node.value), text))
    return out


def tables(source: str | None = None) -> str:
    """The markdown between BEGIN and END: one table per section."""
    chunks, section = [], None
    for sec, name, default, text in fields(source):
        if sec != section:
            section = sec
            chunks.append(f"\n### {sec}\n\n| field | default | what it does |\n|---|---|---|")
        chunks.append(f"| `{name}` | `{default}` | {text.replace('|', '&#124;').replace('<', '&lt;')} |")
    return "\n".join(chunks).strip("\n") + "\n"


def current(markdown: str) -> str:
    """What docs/configs.md holds between BEGIN and END."""
    return markdown.split(BEGIN + "\n", 1)[1].split(END, 1)[0].strip("\n") + "\n"


def main() -> None:
    with open(CONFIGS_MD) as f:
        markdown = f.read()
    head, rest = markdown.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    with open(CONFIGS_MD, "w") as f:
        f.write(f"{head}{BEGIN}\n\n{tables()}\n{END}{tail}")
    print(f"wrote {len(fields())} fields into {os.path.relpath(CONFIGS_MD, REPO)}")


if __name__ == "__main__":
    main()
