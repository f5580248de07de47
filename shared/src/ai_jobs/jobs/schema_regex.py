"""A user's JSON Schema patterns, matched in linear time.

`ai.extract` validates Claude's reply against the user's own schema. jsonschema
matches `pattern` and `patternProperties` with Python's backtracking `re`, so a
pattern such as `^(\\w+\\s?)*$` takes seconds on a 40-character string, doubling with
each character, while holding the GIL: the worker's heartbeat stops, the lease is
reaped and the job runs twice. Compiling a pattern with `re` at create also raised
OverflowError or RecursionError (a 500) for some valid-looking ones.

Here every pattern goes through RE2 (google-re2), which guarantees time linear in
the input and refuses what it cannot do that way (backreferences, lookarounds): the
create answers 422 for such a pattern, and replies are matched with RE2 too.
`unevaluatedProperties` next to `patternProperties` is refused, since jsonschema
matches those patterns internally with `re`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

MAX_PATTERN_CHARS = 1_000
RE2_MAX_MEM = 8 << 20  # bytes RE2 may use for one compiled pattern


class PatternError(ValueError):
    """A pattern RE2 cannot compile, or one too large."""


@lru_cache(maxsize=512)
def compile_pattern(pattern: str) -> Any:
    """The RE2 program for `pattern` (cached: a schema's patterns repeat per reply)."""
    import re2

    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(f"pattern is longer than {MAX_PATTERN_CHARS} characters")
    options = re2.Options()
    options.log_errors = False
    options.max_mem = RE2_MAX_MEM
    try:
        return re2.compile(pattern, options=options)
    except Exception as exc:  # noqa: BLE001 - re2.error, and anything the binding raises on odd input
        detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PatternError(
            f"pattern {pattern[:80]!r} cannot be matched in linear time ({detail[:120]}); "
            "backreferences, lookahead and lookbehind are not supported"
        ) from None


def _walk(value: Any) -> Iterator[dict[str, Any]]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def check_patterns(schema: dict[str, Any]) -> None:
    """Raise ValueError unless every pattern in the schema compiles with RE2 and no
    subschema pairs `patternProperties` with `unevaluatedProperties`. Walks every
    object, so a keyword-looking key inside `properties` is checked too (harmless)."""
    has_pattern_properties = has_unevaluated = False
    for node in _walk(schema):
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            compile_pattern(pattern)
        pattern_properties = node.get("patternProperties")
        if isinstance(pattern_properties, dict):
            has_pattern_properties = True
            for key in pattern_properties:
                compile_pattern(key)
        if "unevaluatedProperties" in node:
            has_unevaluated = True
    if has_pattern_properties and has_unevaluated:
        raise ValueError("patternProperties cannot be combined with unevaluatedProperties in one schema")


def regex_format_checker(base: Any) -> Any:
    """`base` (a jsonschema FormatChecker) with the `regex` format checked by RE2, for
    the meta-schema's check of `pattern` and `patternProperties` keys."""
    checker = copy.copy(base)
    checker.checkers = dict(base.checkers)
    checker.checkers["regex"] = (lambda value: not isinstance(value, str) or bool(compile_pattern(value)),
                                 (PatternError,))
    return checker


def _search(pattern: str, text: str) -> bool:
    return compile_pattern(pattern).search(text) is not None


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, pattern_properties: dict[str, Any], instance: Any,
                        schema: dict[str, Any]) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    from jsonschema.exceptions import ValidationError

    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [key for key in instance
              if key not in properties and not any(_search(p, key) for p in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        listed = ", ".join(repr(e) for e in sorted(extras))
        yield ValidationError(f"Additional properties are not allowed ({listed} unexpected)")


@lru_cache(maxsize=16)
def linear_time_validator(cls: Any) -> Any:
    """`cls` (a jsonschema validator class) with the keywords that match patterns
    (`pattern`, `patternProperties`, `additionalProperties`) matching them with RE2."""
    from jsonschema import validators

    return validators.extend(cls, {"pattern": _pattern, "patternProperties": _pattern_properties,
                                   "additionalProperties": _additional_properties})
