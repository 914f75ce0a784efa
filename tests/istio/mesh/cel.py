"""The CRDs' CEL rules (x-kubernetes-validations), run on cel-python with the
few functions of Kubernetes' CEL libraries that these rules call, on an
object as Kubernetes exposes it to CEL (escaped property names)."""

from __future__ import annotations

import functools
import re

import celpy
from celpy import celtypes


def _request_uri_scheme(text: str) -> str | None:
    """The scheme of `text` if Go's url.ParseRequestURI accepts it (an
    absolute URI or an absolute path), else None."""
    if re.search(r"[\s\x00-\x1f\x7f]", text):
        return None
    if text.startswith("/"):
        return ""
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", text)
    return scheme.group(1).lower() if scheme else None


def _cel_url(text):
    if _request_uri_scheme(str(text)) is None:
        raise ValueError(f"url: invalid URL {text!r}")
    return text


CEL_FUNCTIONS = {
    "isURL": lambda text: celtypes.BoolType(_request_uri_scheme(str(text)) is not None),
    "url": _cel_url,
    "getScheme": lambda url: celtypes.StringType(_request_uri_scheme(str(url)) or ""),
    "split": lambda text, sep: celtypes.ListType([celtypes.StringType(p) for p in str(text).split(str(sep))]),
    "upperAscii": lambda text: celtypes.StringType(str(text).upper()),
}
_CEL = celpy.Environment()
_CEL_RESERVED = {
    "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if",
    "import", "let", "loop", "package", "namespace", "return", "var", "void", "while",
}


@functools.cache
def _cel_program(rule: str):
    return _CEL.program(_CEL.compile(rule), functions=CEL_FUNCTIONS)


def _cel_name(name: str) -> str:
    """A property name as Kubernetes exposes it to CEL (`namespace` is
    `__namespace__`, `-` is `__dash__`, ...)."""
    if name in _CEL_RESERVED:
        return f"__{name}__"
    for raw, escaped in (("__", "__underscores__"), (".", "__dot__"), ("-", "__dash__"), ("/", "__slash__")):
        name = name.replace(raw, escaped)
    return name


def _cel_value(schema: dict, value):
    """`value` as a rule sees it: the properties of a structural object under
    their CEL names (map keys stay as they are)."""
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is not None:
            return {_cel_name(k): _cel_value(props.get(k, {}), v) for k, v in value.items()}
        sub = schema.get("additionalProperties")
        return {k: _cel_value(sub if isinstance(sub, dict) else {}, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cel_value(schema.get("items", {}), v) for v in value]
    return value


def cel_errors(schema: dict, value, path: str) -> list[str]:
    """The messages of the CEL rules `value` breaks, its own and those of
    its properties and items, each at its path below `path`."""
    errors = []
    for check in schema.get("x-kubernetes-validations", []):
        rule = check["rule"]
        try:
            holds = _cel_program(rule).evaluate({"self": celpy.json_to_cel(_cel_value(schema, value))})
            reason = ""
        except celpy.CELEvalError as e:
            holds, reason = False, f" (evaluation error: {e.args[0]})"
        if not (isinstance(holds, celtypes.BoolType) and holds):
            errors.append(f"{path}: {check.get('message', rule)}{reason}")
    if isinstance(value, dict):
        for name, sub in value.items():
            sub_schema = schema.get("properties", {}).get(name) or schema.get("additionalProperties")
            if isinstance(sub_schema, dict):
                errors += cel_errors(sub_schema, sub, f"{path}.{name}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, sub in enumerate(value):
            errors += cel_errors(schema["items"], sub, f"{path}[{i}]")
    return errors
