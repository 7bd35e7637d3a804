"""The safe expression evaluator: JavaScript-flavoured lookups, and refusal of everything hostile."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from flowcraft_core.errors import ExpressionError
from flowcraft_core.expressions import Evaluator, SafeEvaluator


@pytest.fixture
def ev() -> SafeEvaluator:
    return SafeEvaluator()


@pytest.fixture
def scope() -> dict[str, Any]:
    return {
        "result": {"output": {"score": 0.7, "value": {"text": "hi", "n": 3}, "class": "A"}, "action": None},
        "context": {
            "user": {"name": "Ada", "tags": ["x", "y"]},
            "some.key": 42,
            "_outputs": {"fetch": {"rows": 2}},
            "done": False,
            "count": 0,
        },
        "input": {"items": [10, 20, 30], "title": "Hello"},
    }


# --- SPEC acceptance case 5 -----------------------------------------------------------------------


@pytest.mark.parametrize(("score", "expected"), [(0.9, True), (0.5, False), (0.1, False)])
def test_condition_routes_on_score(ev: SafeEvaluator, score: float, expected: bool) -> None:
    assert ev.evaluate("result.output.score > 0.5", {"result": {"output": {"score": score}}}) is expected


def test_transform_value_becomes_input(ev: SafeEvaluator, scope: dict[str, Any]) -> None:
    assert ev.evaluate("result.output.value", scope) == {"text": "hi", "n": 3}


def test_transform_result_is_detached_from_scope(ev: SafeEvaluator, scope: dict[str, Any]) -> None:
    value = ev.evaluate("result.output.value", scope)
    value["n"] = 99
    assert scope["result"]["output"]["value"]["n"] == 3


# --- lookups ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("context.user.name", "Ada"),
        ("input.items[0]", 10),
        ("input.items[-1]", 30),
        ("input.items[1:]", [20, 30]),
        ('context["some.key"]', 42),
        ("context['user']['tags'][1]", "y"),
        ("context._outputs.fetch.rows", 2),
        ("input.items.length", 3),
        ("input.title.length", 5),
        ("context.user.tags.length > 1", True),
        ("result.output.class", "A"),
        ("result?.output?.score", 0.7),
        ("input?.items?.[2]", 30),
        ("input.title[0]", "H"),
    ],
)
def test_property_paths(ev: SafeEvaluator, scope: dict[str, Any], expression: str, expected: Any) -> None:
    assert ev.evaluate(expression, scope) == expected


@pytest.mark.parametrize(
    "expression",
    [
        "context.missing",
        "context.missing.deeper.still",
        "input.items[10]",
        "input.items['x']",
        "nope",
        "nope.at.all",
        "context.user.name.first",
        "context.length",
        "result.action",
        "null.x",
        "context.missing.toLowerCase()",
    ],
)
def test_missing_is_undefined(ev: SafeEvaluator, scope: dict[str, Any], expression: str) -> None:
    assert ev.evaluate(expression, scope) is None


@pytest.mark.parametrize(
    "expression",
    ["context.missing > 0.5", "None > 0.5", "null <= 1", "context.user.name < 3", "input.items >= 1"],
)
def test_incomparable_orderings_are_false(ev: SafeEvaluator, scope: dict[str, Any], expression: str) -> None:
    assert ev.evaluate(expression, scope) is False


def test_python_attributes_are_never_exposed(ev: SafeEvaluator) -> None:
    # dict.items / dict.keys are methods in Python; here they are only keys.
    assert ev.evaluate("context.items", {"context": {}}) is None
    assert ev.evaluate("context.keys", {"context": {"keys": [1]}}) == [1]
    assert ev.evaluate("x.real", {"x": 5}) is None
    assert ev.evaluate("s.upper", {"s": "abc"}) is None


def test_non_json_scope_objects_are_opaque(ev: SafeEvaluator) -> None:
    class Secret:
        token = "s3cr3t"

    assert ev.evaluate("obj.token", {"obj": Secret()}) is None
    with pytest.raises(ExpressionError, match="not a JSON-like value"):
        ev.evaluate("obj", {"obj": Secret()})


# --- literals and operators ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("true", True),
        ("false", False),
        ("null", None),
        ("undefined", None),
        ("True and not False", True),
        ("None", None),
        ("'single' + \"double\"", "singledouble"),
        ("1 + 2 * 3 - 4 / 2", 5.0),
        ("7 // 2 + 7 % 2", 4),
        ("2 ** 10", 1024),
        ("-input.items[0]", -10),
        ("1 < 2 < 3", True),
        ("'x' in context.user.tags", True),
        ("'z' not in context.user.tags", True),
        ("'user' in context", True),
        ("'ell' in input.title", True),
        ("1 in null", False),
        ("'big' if result.output.score > 0.5 else 'small'", "big"),
        ("[1, 'a', null]", [1, "a", None]),
        ("(1, 2)", [1, 2]),
        ("{'a': 1, b: input.items[0], 3: true}", {"a": 1, "b": 10, "3": True}),
        ("context.count or 'default'", "default"),
        ("context.done is False", True),
        ("'n=' + null + ',' + true + ',' + 2.0", "n=null,true,2"),
        ("input.items + [40]", [10, 20, 30, 40]),
        ("'ab' * 3", "ababab"),
    ],
)
def test_literals_and_operators(ev: SafeEvaluator, scope: dict[str, Any], expression: str, expected: Any) -> None:
    assert ev.evaluate(expression, scope) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("context.done === false", True),
        ("context.count !== 0", False),
        ("context.count != 1", True),
        ("!context.done", True),
        ("!!context.user", True),
        ("!context.done && context.count === 0", True),
        ("context.done || context.user.name === 'Ada'", True),
        # JavaScript precedence: `!a == b` is `(!a) == b`.
        ("!context.done == true", True),
        ("!(context.count > 1) && !context.done", True),
        ("result.output.score > 0.5&&input.items.length===3", True),
        ("context.user.name.toLowerCase() === 'ada'", True),
        ("input.title.startsWith('He') && input.title.endsWith('lo')", True),
        ("input.title.includes('ell')", True),
        ("context.user.tags.includes('y')", True),
        ("'  pad '.trim().toUpperCase()", "PAD"),
    ],
)
def test_javascript_spellings(ev: SafeEvaluator, scope: dict[str, Any], expression: str, expected: Any) -> None:
    assert ev.evaluate(expression, scope) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("'a && b' + \"|| !c\"", "a && b|| !c"),
        ("'x === y' === 'x === y'", True),
        ("context['some.key'] !== 'a !== b'", True),
        ("'it\\'s && ok'", "it's && ok"),
    ],
)
def test_spellings_inside_strings_are_left_alone(
    ev: SafeEvaluator, scope: dict[str, Any], expression: str, expected: Any
) -> None:
    assert ev.evaluate(expression, scope) == expected


def test_line_breaks_are_whitespace(ev: SafeEvaluator, scope: dict[str, Any]) -> None:
    assert ev.evaluate("result.output.score > 0.5\n  && !context.done", scope) is True


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("len(input.items)", 3),
        ("str(3) + str(null)", "3null"),
        ("int('12') + float('0.5')", 12.5),
        ("Number('2.5') * 2", 5.0),
        ("bool(context.user)", True),
        ("abs(-2)", 2),
        ("min(3, 1, 2) + max(input.items)", 31),
        ("round(2.567, 2)", 2.57),
    ],
)
def test_whitelisted_functions(ev: SafeEvaluator, scope: dict[str, Any], expression: str, expected: Any) -> None:
    assert ev.evaluate(expression, scope) == expected


# --- hostile input ---------------------------------------------------------------------------------

HOSTILE = [
    pytest.param("__import__('os')", "__", id="import"),
    pytest.param("__import__('os').system('echo pwned')", "__", id="import-system"),
    pytest.param("().__class__.__bases__[0].__subclasses__()", "__", id="class-walk"),
    pytest.param("().__class__", "__", id="dunder-attr"),
    pytest.param("context.__class__", "__", id="dunder-on-scope"),
    pytest.param("__builtins__", "__", id="dunder-name"),
    pytest.param("x.a__b", "__", id="dunder-inside"),
    pytest.param("open('/etc/passwd')", "not allowed", id="open"),
    pytest.param("eval('1')", "not allowed", id="eval"),
    pytest.param("getattr(context, 'x')", "not allowed", id="getattr"),
    pytest.param("type(1)", "not allowed", id="type"),
    pytest.param("context.get('x')", "not allowed", id="dict-method"),
    pytest.param("context.clear()", "not allowed", id="mutating-method"),
    pytest.param("'{0.__class__}'.format(1)", "not allowed", id="format"),
    pytest.param("'a'.ljust(10**9)", "not allowed", id="ljust"),
    pytest.param("len(x=1)", "keyword", id="keyword-arg"),
    pytest.param("(lambda: 1)", "lambda", id="lambda"),
    pytest.param("(lambda: 1)()", "call", id="lambda-call"),
    pytest.param("[x for x in [1, 2]]", "comprehension", id="list-comp"),
    pytest.param("{x: 1 for x in 'ab'}", "comprehension", id="dict-comp"),
    pytest.param("sum(x for x in [1])", "not allowed", id="generator"),
    pytest.param("f'{1:>999999999}'", "f-string", id="f-string"),
    pytest.param("(y := 1)", "assignment", id="walrus"),
    pytest.param("[*input.items]", "star", id="star"),
    pytest.param("{**context}", "unpacking", id="dict-splat"),
    pytest.param("{1, 2}", "set", id="set"),
    pytest.param("b'bytes'", "bytes", id="bytes"),
    pytest.param("1j", "complex", id="complex"),
    pytest.param("1 << 10000", "bitwise", id="shift"),
    pytest.param("1 | 2", "bitwise", id="bit-or"),
    pytest.param("~1", "bitwise", id="invert"),
    pytest.param("x = 1", "invalid", id="assign"),
    pytest.param("import os", "invalid", id="import-statement"),
    pytest.param("1; 2", "invalid", id="two-statements"),
    pytest.param("a ? b : c", "ternary", id="js-ternary"),
    pytest.param("a ?? b", "\\?\\?", id="nullish"),
    pytest.param("`${a}`", "template", id="template-literal"),
    pytest.param("'unterminated", "unterminated", id="unterminated"),
    pytest.param("1 # comment", "comment", id="comment"),
    pytest.param("", "empty", id="empty"),
    pytest.param("   ", "empty", id="blank"),
    pytest.param("9**9**9", "limited to 1000", id="power-tower"),
    pytest.param("2 ** 1001", "limited to 1000", id="power-exponent"),
    pytest.param("(2 ** 10) ** 2", "limited to 1000", id="power-nested"),
    pytest.param("1000.0 ** 1000", "overflow|range", id="float-power-overflow"),
    pytest.param("(-8) ** 0.5", "not a real number", id="complex-power"),
    pytest.param("'a' * 10**9", "max_string_length", id="string-repeat"),
    pytest.param("'a' * 100000 * 2", "max_string_length", id="string-repeat-chain"),
    pytest.param("[0] * 10**9", "max_string_length", id="list-repeat"),
    pytest.param("['a' * 100000] * 100000", "max_string_length", id="nested-repeat"),
    pytest.param("('a' * 60000) + ('b' * 60000)", "max_string_length", id="concat"),
    pytest.param("(999**999) * (999**999) * (999**999) * (999**999) * (999**999) * (999**999)", "bits", id="bigint"),
    pytest.param("'%999999999d' % 1", "number", id="percent-format"),
    pytest.param("x" * 1001, "limit is 1000", id="too-long"),
    pytest.param("(" * 100 + "1" + ")" * 100, "nested deeper", id="deep-parens"),
    pytest.param("[" * 50 + "]" * 50, "nested deeper", id="deep-brackets"),
    pytest.param("not " * 200 + "x", "nested deeper|syntax nodes", id="deep-not"),
    pytest.param("-" * 900 + "1", "nested deeper|syntax nodes", id="deep-minus"),
    pytest.param(" + ".join(["1"] * 70), "nested deeper", id="long-sum"),
    pytest.param("&&".join(["x"] * 201), "syntax nodes", id="too-many-nodes"),
    pytest.param("1 / 0", "division by zero", id="zero-division"),
    pytest.param("1e308 * 10", "finite", id="infinity"),
    pytest.param("float('nan')", "finite", id="nan"),
    pytest.param("int('9' * 5000)", "digits", id="int-str-digits"),
    pytest.param("'a' - 1", "number", id="type-error"),
]


@pytest.mark.parametrize(("expression", "message"), HOSTILE)
def test_hostile_expressions_are_refused(ev: SafeEvaluator, expression: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        ev.evaluate(expression, {"context": {"x": 1}, "input": {"items": [1]}})


STATIC = [
    p
    for p in HOSTILE
    if p.id
    not in {
        "power-tower",
        "power-exponent",
        "power-nested",
        "float-power-overflow",
        "complex-power",
        "string-repeat",
        "string-repeat-chain",
        "list-repeat",
        "nested-repeat",
        "concat",
        "bigint",
        "percent-format",
        "zero-division",
        "infinity",
        "nan",
        "int-str-digits",
        "type-error",
    }
]


@pytest.mark.parametrize(("expression", "message"), STATIC)
def test_check_refuses_without_evaluating(ev: SafeEvaluator, expression: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        ev.check(expression)


@pytest.mark.parametrize(
    "expression",
    ["result.output.score > 0.5", "!context.done && input.items.length === 3", "9**9**9", "'a' * 10**9"],
)
def test_check_accepts_well_formed_expressions(ev: SafeEvaluator, expression: str) -> None:
    # Run-time limits (power, repetition) need values, so check() only vets the syntax.
    ev.check(expression)


def test_hostile_code_never_runs(ev: SafeEvaluator) -> None:
    called: list[str] = []

    def spy() -> str:
        called.append("called")
        return "x"

    for expression in ["spy()", "context.spy()", "context['spy']()", "(context.spy)()"]:
        with pytest.raises(ExpressionError):
            ev.evaluate(expression, {"spy": spy, "context": {"spy": spy}})
    assert called == []


def test_callables_in_scope_cannot_be_returned(ev: SafeEvaluator) -> None:
    with pytest.raises(ExpressionError):
        ev.evaluate("context.fn", {"context": {"fn": print}})


def test_non_string_expression_is_refused(ev: SafeEvaluator) -> None:
    with pytest.raises(ExpressionError, match="must be a string"):
        ev.evaluate(42, {})  # type: ignore[arg-type]


# --- limits are per evaluator ----------------------------------------------------------------------


def test_limits_are_configurable() -> None:
    small = SafeEvaluator(max_length=10, max_string_length=5, max_power=3, max_nodes=3)
    assert small.evaluate("3 ** 3", {}) == 27
    assert small.evaluate("'ab' * 2", {}) == "abab"
    with pytest.raises(ExpressionError, match="limited to 3"):
        small.evaluate("2 ** 4", {})
    with pytest.raises(ExpressionError, match="max_string_length"):
        small.evaluate("'ab' * 3", {})
    with pytest.raises(ExpressionError, match="limit is 10"):
        small.evaluate("1 + 2 + 3 + 4", {})
    with pytest.raises(ExpressionError, match="syntax nodes"):
        small.evaluate("1+2+3", {})
    # Another evaluator on the same thread keeps its own limits.
    assert SafeEvaluator().evaluate("2 ** 4", {}) == 16


def test_is_an_evaluator() -> None:
    assert isinstance(SafeEvaluator(), Evaluator)


def test_repeated_evaluation_uses_fresh_scope(ev: SafeEvaluator) -> None:
    assert ev.evaluate("context.n + 1", {"context": {"n": 1}}) == 2
    assert ev.evaluate("context.n + 1", {"context": {"n": 5}}) == 6
    assert ev.evaluate("context.n", {}) is None


def test_threads_evaluate_independently(ev: SafeEvaluator) -> None:
    results: dict[int, Any] = {}

    def work(n: int) -> None:
        results[n] = [ev.evaluate("input.n * 2", {"input": {"n": n}}) for _ in range(200)]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {n: [n * 2] * 200 for n in range(8)}
