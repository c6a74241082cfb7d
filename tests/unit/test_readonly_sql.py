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


def call(function: str, *arguments: str) -> str:
    """``SELECT function(arguments)`` as EXPLAIN AST prints it; an argument may span lines."""
    lines = [line for argument in arguments for line in argument.splitlines()]
    return SELECT_ONE.replace(
        "    Literal UInt64_1\n",
        f"    Function {function} (children 1)\n     ExpressionList (children {len(arguments)})\n"
        + "".join(f"      {line}\n" for line in lines),
    )


SET_FUNCTIONS = ["in", "notIn", "globalIn", "globalNotIn", "nullIn", "notNullIn", "globalNullIn",
                 "globalNotNullIn", "inIgnoreSet", "globalNotNullInIgnoreSet"]  # fmt: skip
TO_STRING = "Function toString (children 1)\n ExpressionList (children 1)\n  Identifier other.secret"


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
        # EXPLAIN AST prints `my db`.t unquoted: the name is all of it, not its first word.
        (TABLE.format(table="TableIdentifier my db.sec ret"), "table my db.sec ret is outside the database db"),
        (TABLE.format(table="TableIdentifier  db.events"), "table  db.events is outside the database db"),
        (TABLE.format(table="TableIdentifier db.a.b"), "table db.a.b is ambiguous"),
        ("ExistsTableQuery  events (children 1)\n Identifier events\n", None),
        ("ShowCreateTableQuery db events (children 2)\n Identifier db\n Identifier events\n", None),
        (
            "ShowCreateTableQuery my db sec ret (children 2)\n Identifier my db\n Identifier sec ret\n",
            "table my db.sec ret is outside the database db",
        ),
        # `x IN name` reads the table name: a membership oracle on it.
        *[
            (call(f, "Literal 'TOPSECRET'", "Identifier other.secret"), "table other.secret is outside the database db")
            for f in SET_FUNCTIONS
        ],
        (call("in", TO_STRING, "Identifier other.secret"), "table other.secret is outside the database db"),
        (call("in", "Literal 'x'", "Identifier my db.sec ret"), "table my db.sec ret is outside the database db"),
        (call("in", "Literal 'x'", "Identifier system.processes"), "table system.processes is outside the"),
        (call("in", "Identifier e.name", "Identifier e.tags"), "table e.tags is outside the database db"),
        (call("in", "Literal 'x'", "Identifier db.events"), None),
        (call("in", "Literal 'x'", "Identifier events"), None),
        (call("in", "Literal 'x'", "Identifier system.tables"), None),
        (call("in", "Literal UInt64_1", "Literal Tuple_(UInt64_1, UInt64_2)"), None),
        (call("has", "Identifier other.secret", "Literal 'x'"), None),  # an array column, not a table
        (call("in", "Identifier other.secret", "Identifier events"), None),  # the left side is a column
        # joinGet and the dict* functions read the Join table or dictionary their first argument names.
        (call("joinGet", "Literal 'other.j'", "Literal 'v'", "Literal UInt64_1"), "table other.j is outside"),
        (
            call("joinGetOrNull", "Identifier other.j", "Literal 'v'", "Literal UInt64_1"),
            "function joinGetOrNull() must name its table with a string literal",
        ),
        (call("joinGet", "Identifier n", "Literal 'v'", "Literal UInt64_1"), "function joinGet() must name its"),
        (call("dictGet", "Literal 'other.d'", "Literal 'v'", "Literal UInt64_1"), "dictionary other.d is outside"),
        (call("dictGetString", "Literal 'other.d'", "Literal 'v'", "Literal UInt64_1"), "dictionary other.d is"),
        (call("dictHas", "Literal 'other.d'", "Literal UInt64_1"), "dictionary other.d is outside the database db"),
        (call("dictGet", "Literal 'oth\\'er.d'", "Literal 'v'", "Literal UInt64_1"), "dictionary oth\\'er.d is"),
        (
            call("dictGetOrDefault", TO_STRING, "Literal 'v'", "Literal UInt64_1", "Literal 'x'"),
            "function dictGetOrDefault() must name its dictionary with a string literal",
        ),
        (call("dictGet", "Literal UInt64_1", "Literal 'v'", "Literal UInt64_1"), "function dictGet() must name its"),
        (call("joinGet", "Literal 'db.j'", "Literal 'v'", "Literal UInt64_1"), None),
        (call("joinGet", "Literal 'j'", "Literal 'v'", "Literal UInt64_1"), None),
        (call("dictGet", "Literal 'db.d'", "Literal 'v'", "Literal UInt64_1"), None),
        (call("dictGetOrNull", "Literal 'd'", "Literal 'v'", "Literal UInt64_1"), None),
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


# Names as EXPLAIN AST prints them: unquoted, blanks and dots kept.
NAMES = st.text(alphabet=st.sampled_from("dbotherDB_9 ."), min_size=1, max_size=12)
FOREIGN = st.tuples(NAMES, NAMES).filter(lambda n: n[0] != "db" and n[0].lower() != "system")


@given(st.sampled_from(SET_FUNCTIONS), FOREIGN)
def test_no_membership_test_on_a_table_of_another_database_is_let_through(function, name):
    ast = call(function, "Literal 'x'", f"Identifier {name[0]}.{name[1]}")
    assert refusal("SELECT ...", ast, "db") is not None


@given(st.sampled_from(["joinGet", "joinGetOrNull", "dictGet", "dictGetString", "dictHas"]), FOREIGN)
def test_no_join_table_or_dictionary_of_another_database_is_let_through(function, name):
    ast = call(function, f"Literal {string_literal(f'{name[0]}.{name[1]}')}", "Literal UInt64_1")
    assert refusal("SELECT ...", ast, "db") is not None


@given(st.sampled_from([*SET_FUNCTIONS, "joinGet", "dictGet"]), NAMES.filter(lambda n: "." not in n))
def test_names_in_the_database_are_let_through(function, table):
    if function in SET_FUNCTIONS:
        arguments = ("Literal 'x'", f"Identifier db.{table}")
    else:
        arguments = (f"Literal {string_literal(f'db.{table}')}", "Literal UInt64_1")
    assert refusal("SELECT ...", call(function, *arguments), "db") is None


def test_tab_separated_output_is_unescaped():
    assert tab_separated_text(b"SELECT 'a\\\\nb'\\nFORMAT JSON\n") == "SELECT 'a\\nb'\nFORMAT JSON\n"
    assert tab_separated_text(b"Literal \\'x\\'") == "Literal 'x'"
