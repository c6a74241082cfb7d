"""The read-only rule over syntax trees as ``EXPLAIN AST`` prints them (the engine itself is
exercised in tests/integration/test_query_gateway.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastionary.storage.readonly_sql import (
    NotReadOnly,
    checked_statement,
    refusal,
    string_literal,
    tab_separated_text,
)

SELECT_ONE = """SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 1)
   ExpressionList (children 1)
    Literal UInt64_1
"""
OUTFILE = SELECT_ONE + " Literal 'x'\n"
FORMATTED_JSON = SELECT_ONE + " Identifier JSON\n"
TABLE = """SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 1)
    Asterisk
   TablesInSelectQuery (children 1)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      {table}
"""


@pytest.mark.parametrize(
    ("ast", "reason"),
    [
        (SELECT_ONE, None),
        (FORMATTED_JSON, None),
        (OUTFILE, "INTO OUTFILE writes a file"),
        ("InsertQuery   (children 2)\n Identifier db\n Identifier t\n", "INSERT is not a read"),
        ("SYSTEM query\n", "SYSTEM is not a read"),
        ("Set\n", "SET is not a read"),
        (TABLE.format(table="TableIdentifier db.events (alias e)"), None),
        (TABLE.format(table="TableIdentifier events"), None),
        (TABLE.format(table="TableIdentifier system.tables"), None),
        (TABLE.format(table="TableIdentifier system.users"), "table system.users is outside the database db"),
        (TABLE.format(table="TableIdentifier other.events"), "table other.events is outside the database db"),
        (TABLE.format(table="Function numbers (children 1)"), None),
        (TABLE.format(table="Function url (children 1)"), "table function url() reads outside the database"),
        (SELECT_ONE.replace("Literal UInt64_1", "Function file (children 1)"), "function file() reads the host"),
        ("ExistsTableQuery system users (children 2)\n", "table system.users is outside the database db"),
        ("ShowTables\n", None),
        ("", "empty statement"),
    ],
)
def test_refusal(ast, reason):
    found = refusal("SELECT ...", ast, "db")
    assert found == reason or (reason is not None and found is not None and found.startswith(reason))


def test_the_canonical_outfile_clause_is_refused_even_if_the_tree_hid_it():
    assert refusal("SELECT 1\nINTO OUTFILE 'x'", SELECT_ONE, "db") == "INTO OUTFILE writes a file"
    assert refusal("SELECT 'a\\nINTO OUTFILE b'", SELECT_ONE, "db") is None  # inside a literal


def test_checked_statement_asks_the_engine_twice_and_returns_the_canonical_text():
    asked = []

    def run(statement: str) -> str:
        asked.append(statement)
        return "SELECT 1\nFORMAT JSON" if statement.startswith("SELECT formatQuery") else FORMATTED_JSON

    assert checked_statement(run, "select 1 format JSON -- hi", "db") == "SELECT 1\nFORMAT JSON"
    assert asked == ["SELECT formatQuery('select 1 format JSON -- hi')", "EXPLAIN AST SELECT 1"]
    with pytest.raises(NotReadOnly, match="INTO OUTFILE"):
        checked_statement(lambda s: "SELECT 1" if "formatQuery" in s else OUTFILE, "x", "db")


@given(st.text())
def test_string_literals_cannot_be_broken_out_of(text):
    literal = string_literal(text)
    assert literal.startswith("'") and literal.endswith("'")
    inner = literal[1:-1]
    # Every quote inside is escaped, so the literal ends only where it was closed.
    i = 0
    while i < len(inner):
        if inner[i] == "\\":
            i += 2
            continue
        assert inner[i] != "'"
        i += 1


@given(st.text(), st.text(), st.none() | st.text())
def test_refusal_never_raises(formatted, ast, database):
    result = refusal(formatted, ast, database)
    assert result is None or isinstance(result, str)


def test_tab_separated_output_is_unescaped():
    assert tab_separated_text(b"SELECT 'a\\\\nb'\\nFORMAT JSON\n") == "SELECT 'a\\nb'\nFORMAT JSON\n"
    assert tab_separated_text(b"Literal \\'x\\'") == "Literal 'x'"
