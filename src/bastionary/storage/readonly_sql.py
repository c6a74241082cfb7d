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
- tables of the configured database only, plus a few harmless ``system`` tables; that
  includes the tables the engine reads by name outside a FROM: a bare name on the right of
  ``IN`` (and its ``GLOBAL``, ``NOT`` and ``null`` forms), and the Join table or dictionary
  that ``joinGet`` and the ``dict*`` functions name in their first argument.

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
# ``x IN name`` reads the table ``name`` as a set unless a column of that name is in scope:
# a membership oracle on any table, so a bare name there is held to the rule of FROM.
_SET_FUNCTIONS = re.compile(r"^(global)?(not)?(null)?in(ignoreset)?$")
# These read a Join table or a dictionary named by their first argument, whose value may be
# computed (``concat``, an alias of a literal...): only a literal name can be checked.
_NAMED_OBJECT_FUNCTIONS = re.compile(r"^(?P<kind>joinget|dict)")
_STRING_LITERAL = re.compile(r"^'(?P<text>(?:[^'\\]|\\.)*)'$")
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
        # Not lstrip: a leading blank belongs to a name (` db`.t), and dropping it would make
        # that database read as ``db``.
        nodes.append(_Node(len(match["indent"]), match["node"], (match["rest"] or "").rstrip()))
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
        if node.kind == "Function" and (reason := _named_table_refusal(nodes, position, database)):
            return reason
        if node.kind == "TableExpression" and position + 1 < len(nodes):
            child = nodes[position + 1]
            if child.kind == "Function" and child.detail.split(" ")[0].lower() not in GENERATOR_TABLE_FUNCTIONS:
                return f"table function {child.detail.split(' ')[0]}() reads outside the database"
        # The whole name: EXPLAIN AST prints `my db`.t unquoted, as "my db.t".
        if node.kind == "TableIdentifier" and (reason := _foreign_table(node.detail, database)):
            return reason
    if root.kind in ("ExistsTableQuery", "ShowCreateTableQuery"):
        # The children give the database and the table apart, blanks and all; the root's line
        # runs them together (`my db`.t reads "my db t").
        parts = [n.detail for n in nodes if n.depth == 1 and n.kind == "Identifier"] or root.detail.split()
        if len(parts) >= 2 and (reason := _foreign_table(f"{parts[0]}.{parts[1]}", database)):
            return reason
    return None


def _named_table_refusal(nodes: list[_Node], position: int, database: str | None) -> str | None:
    function = nodes[position].detail.split(" ")[0]
    arguments = _arguments(nodes, position)
    if _SET_FUNCTIONS.match(function.lower()):
        if len(arguments) >= 2 and arguments[1].kind == "Identifier":
            # A qualified column (``e.tags``) reads the same as a table here; both are refused
            # unless the first part is the database, since which one the engine picks depends
            # on the columns in scope, which the tree does not show.
            return _foreign_table(arguments[1].detail, database)
        return None
    if match := _NAMED_OBJECT_FUNCTIONS.match(function.lower()):
        kind = "table" if match["kind"] == "joinget" else "dictionary"
        name = _string_literal_text(arguments[0]) if arguments else None
        if name is None:
            return f"function {function}() must name its {kind} with a string literal"
        return _foreign_table(name, database, kind)
    return None


def _arguments(nodes: list[_Node], position: int) -> list[_Node]:
    """The argument nodes of the function at ``position``: its first list's children."""
    depth = nodes[position].depth
    if position + 1 >= len(nodes) or nodes[position + 1].kind != "ExpressionList":
        return []
    if nodes[position + 1].depth != depth + 1:
        return []
    arguments = []
    for node in nodes[position + 2 :]:
        if node.depth <= depth + 1:
            break
        if node.depth == depth + 2:
            arguments.append(node)
    return arguments


def _string_literal_text(node: _Node) -> str | None:
    match = _STRING_LITERAL.match(node.detail) if node.kind == "Literal" else None
    if match is None:  # a number, or an expression: nothing to check before it runs
        return None
    # Left escaped: it stays one line for the message, and escaping only adds backslashes, so
    # an escaped name equals a plain database name only if it is that very name.
    return match["text"]


def _foreign_table(name: str, database: str | None, kind: str = "table") -> str | None:
    if "." not in name:
        return None  # the current database
    schema, table = name.split(".", 1)
    if schema == database and "." not in table:
        return None
    if schema.lower() == "system" and table.lower() in READABLE_SYSTEM_TABLES:
        return None
    if schema == database:  # `db`.`a.b` and `db.a`.b print alike: either may be meant
        return f"{kind} {name} is ambiguous: a dot in a database or {kind} name"
    return f"{kind} {name} is outside the database {database}"


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
