"""What a read-only user may run, decided by ClickHouse's own parser, never by regexes.

A statement is first normalised by the engine (``formatQuery``): that refuses several
statements, strips comments and spells every clause one canonical way. Its syntax tree
(``EXPLAIN AST``, which parses and runs nothing) is then checked here:

- the statement is a read: SELECT (with UNION, INTERSECT, EXCEPT, WITH), SHOW TABLES or
  DATABASES, DESCRIBE, EXISTS, SHOW CREATE, or EXPLAIN of any of those;
- no ``INTO OUTFILE`` (chdb writes the file even under ``readonly = 1``);
- no function that reads the host: the scalar ``file()`` reads any file under readonly;
- no table function but the generators (``numbers``, ``zeros``...): ``file``, ``url``,
  ``s3``, ``remote``, ``executable``, ``input`` and the rest read or reach outside;
- tables of the configured database only, plus a few harmless ``system`` tables.

Settings are the engine's business: the caller applies its limits and then ``readonly = 1``,
under which ClickHouse refuses any change to them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

READ_ROOTS = frozenset(
    {
        "SelectWithUnionQuery",
        "SelectIntersectExceptQuery",
        "ShowTables",  # SHOW TABLES and SHOW DATABASES
        "DescribeQuery",
        "ExistsTableQuery",
        "ShowCreateTableQuery",
        "Explain",
    }
)
GENERATOR_TABLE_FUNCTIONS = frozenset(
    {
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "generate_series",
        "generateseries",
        "values",
        "null",
        "viewexplain",
    }  # SELECT ... FROM (EXPLAIN ...): the explained statement is in the tree and checked too
)
# Scalar functions that read the host or its memory; the introspection ones are off by
# default and readonly cannot turn them on, but a list that names them costs nothing.
HOST_FUNCTIONS = frozenset(
    {"file", "addresstoline", "addresstolinewithinlines", "addresstosymbol", "demangle", "getmacro"}
)
READABLE_SYSTEM_TABLES = frozenset(
    {"tables", "columns", "parts", "databases", "one", "numbers", "functions", "formats", "data_type_families",
     "time_zones", "table_functions", "settings", "build_options"}
)  # fmt: skip
# In canonical text the clause starts a line, and a literal's line breaks are escaped.
_OUTFILE_CLAUSE = re.compile(r"^INTO OUTFILE\b", re.MULTILINE)
_LINE = re.compile(r"^(?P<indent> *)(?P<node>\S+)(?: (?P<rest>.*?))?(?: \(children \d+\))?(?: \(alias [^)]*\))?$")


class NotReadOnly(Exception):
    """The statement is refused; ``str()`` says why, in one line."""


@dataclass(frozen=True, slots=True)
class _Node:
    depth: int
    kind: str
    detail: str


def _nodes(ast: str) -> list[_Node]:
    nodes = []
    for line in ast.splitlines():
        if not line.strip():
            continue
        match = _LINE.match(line)
        if match is None:  # a literal holding a line break continues its line
            continue
        nodes.append(_Node(len(match["indent"]), match["node"], (match["rest"] or "").strip()))
    return nodes


def refusal(formatted: str, ast: str, database: str | None) -> str | None:
    """Why the statement whose canonical text is ``formatted`` and syntax tree ``ast`` is
    not a read, or None when it is."""
    nodes = _nodes(ast)
    if not nodes:
        return "empty statement"
    root = nodes[0]
    if root.kind not in READ_ROOTS:
        return f"{_statement_name(root)} is not a read (allowed: SELECT, SHOW, DESCRIBE, EXISTS, EXPLAIN)"
    if any(n.depth == 1 and n.kind == "Literal" for n in nodes) or _OUTFILE_CLAUSE.search(formatted):
        return "INTO OUTFILE writes a file"
    for position, node in enumerate(nodes):
        if node.kind == "Function" and node.detail.split(" ")[0].lower() in HOST_FUNCTIONS:
            return f"function {node.detail.split(' ')[0]}() reads the host"
        if node.kind == "TableExpression" and position + 1 < len(nodes):
            child = nodes[position + 1]
            if child.kind == "Function" and child.detail.split(" ")[0].lower() not in GENERATOR_TABLE_FUNCTIONS:
                return f"table function {child.detail.split(' ')[0]}() reads outside the database"
        if node.kind == "TableIdentifier" and (reason := _foreign_table(node.detail.split(" ")[0], database)):
            return reason
    if root.kind in ("ExistsTableQuery", "ShowCreateTableQuery"):
        parts = root.detail.split(" ")
        if len(parts) >= 2 and (reason := _foreign_table(f"{parts[0]}.{parts[1]}", database)):
            return reason
    return None


def _foreign_table(name: str, database: str | None) -> str | None:
    if "." not in name:
        return None  # the current database
    schema, table = name.split(".", 1)
    if schema == database:
        return None
    if schema.lower() == "system" and table.lower() in READABLE_SYSTEM_TABLES:
        return None
    return f"table {name} is outside the database {database}"


def _statement_name(node: _Node) -> str:
    name = re.sub(r"Query$", "", node.kind)
    return {"Set": "SET", "SYSTEM": "SYSTEM"}.get(name, re.sub(r"(?<!^)([A-Z])", r" \1", name).upper())


def tab_separated_text(output: bytes) -> str:
    """One-column TabSeparated output as plain text (what ``run`` gets from an HTTP client)."""
    escapes = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", "b": "\b", "f": "\f"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m[1], m[1]), output.decode())


def string_literal(text: str) -> str:
    """``text`` as a ClickHouse string literal: only the parser reads it, nothing runs it."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def checked_statement(run: Callable[[str], str], sql: str, database: str | None) -> str:
    """The canonical text of ``sql`` if a read-only user may run it; raises :class:`NotReadOnly`.

    ``run(statement)`` executes one statement and returns its output as plain text, in the
    connection's default format (no FORMAT clause may be added: it would bind to the
    explained statement, not to EXPLAIN). It is given only ``formatQuery`` and ``EXPLAIN
    AST``, which parse and execute nothing of ``sql``.
    Engine errors (a syntax error, several statements) propagate as they are.
    """
    formatted = run(f"SELECT formatQuery({string_literal(sql)})").rstrip("\n")
    if _OUTFILE_CLAUSE.search(formatted):  # EXPLAIN below could not even take it
        raise NotReadOnly("INTO OUTFILE writes a file")
    # EXPLAIN would apply a trailing FORMAT to its own output; canonical text has it on its own line.
    statement = re.sub(r"\nFORMAT \S+$", "", formatted)
    reason = refusal(formatted, run(f"EXPLAIN AST {statement}"), database)
    if reason is not None:
        raise NotReadOnly(reason)
    return formatted
