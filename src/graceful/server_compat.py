"""How graceful checks what it relies on inside a server (uvicorn_compat, gunicorn_compat,
hypercorn_compat): each of those modules lists the methods it overrides or calls, the
attributes it reads and the method of the server's that sets each, and the calls whose
order it depends on; `gaps` says which of them the installed release lacks or changed.

Attributes and calls are read from the server's source (`ast`): where the source cannot be
read (a build without .py files), nothing is claimed missing.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def release(text: str) -> tuple[int, ...]:
    """(0, 38, 0) from "0.38.0"; a pre-release or local suffix ends it ("1.2rc1": (1, 2))."""
    numbers = []
    for part in text.split("."):
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        numbers.append(int(digits))
        if digits != part:
            break
    return tuple(numbers)


def find(path: str) -> Any:
    """The object at "module:Name.attribute"."""
    module, _, attribute = path.partition(":")
    found: Any = importlib.import_module(module)
    for part in attribute.split(".") if attribute else []:
        found = getattr(found, part)
    if isinstance(found, property) and found.fget is not None:
        return found.fget
    return found


def _source_tree(function: Callable[..., Any]) -> ast.AST | None:
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return None


def assigned_by(function: Callable[..., Any]) -> set[str] | None:
    """The names `function` assigns on `self` (`self.x = ...`, `self.x: T = ...`), or
    None where its source cannot be read."""
    tree = _source_tree(function)
    if tree is None:
        return None
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        else:
            continue
        for target in targets:
            for part in ast.walk(target):
                if (
                    isinstance(part, ast.Attribute)
                    and isinstance(part.value, ast.Name)
                    and part.value.id == "self"
                ):
                    names.add(part.attr)
    return names


def calls(function: Callable[..., Any]) -> list[str] | None:
    """The names `function` calls (`f(...)`, `x.f(...)`), in source order, or None where
    its source cannot be read."""
    tree = _source_tree(function)
    if tree is None:
        return None
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            callee = node.func
            name = (
                callee.attr
                if isinstance(callee, ast.Attribute)
                else callee.id
                if isinstance(callee, ast.Name)
                else None
            )
            if name is not None:
                found.append((node.lineno, node.col_offset, name))
    return [name for _, _, name in sorted(found)]


def _label(path: str) -> str:
    return path.partition(":")[2] or path


def gaps(
    methods: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    set_by: Mapping[str, Sequence[str]] | None = None,
    names: Mapping[str, Sequence[str]] | None = None,
    call_order: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """What the installed server lacks or changed, one short phrase each:

    - methods: {"module:Class": {"method": (its parameters after self, as graceful passes
      them)}}: "Class.method(a, b)" when missing, with ", found (...)" when changed;
    - set_by: {"module:Class.method": (attributes that method sets on self)};
    - names: {"module": (names it defines)}, or {"module:Class": (class attributes)};
    - call_order: {"module:Class.method": (names it calls, in this order)}.
    """
    found: list[str] = []
    for owner_path, wanted_methods in (methods or {}).items():
        try:
            owner = find(owner_path)
        except (AttributeError, ImportError):
            found.append(_label(owner_path))
            continue
        for name, wanted in wanted_methods.items():
            label = f"{_label(owner_path)}.{name}({', '.join(wanted)})"
            method = getattr(owner, name, None)
            if not callable(method):
                found.append(label)
                continue
            params = tuple(inspect.signature(method).parameters)
            params = params[1:] if params[:1] in (("self",), ("cls",)) else params
            if params[: len(wanted)] != tuple(wanted):
                found.append(f"{label}, found ({', '.join(params)})")
    for path, attributes in (set_by or {}).items():
        try:
            method = find(path)
        except (AttributeError, ImportError):
            found.append(_label(path))
            continue
        assigned = assigned_by(method)
        if assigned is None:
            continue
        owner = _label(path).rsplit(".", 1)[0]
        found += [
            f"{owner}.{name} (set by {_label(path)})" for name in attributes if name not in assigned
        ]
    for path, wanted_names in (names or {}).items():
        try:
            holder = find(path)
        except (AttributeError, ImportError):
            found.append(path)
            continue
        found += [f"{_label(path) or path}.{n}" for n in wanted_names if not hasattr(holder, n)]
    for path, order in (call_order or {}).items():
        try:
            made = calls(find(path))
        except (AttributeError, ImportError):
            found.append(_label(path))
            continue
        if made is None:
            continue
        position = 0
        for name in order:
            if name not in made[position:]:
                found.append(f"{_label(path)} calling {' then '.join(order)}")
                break
            position = made.index(name, position) + 1
    return found


def verdict(
    server: str, installed: str, oldest: tuple[int, ...], gaps: Callable[[], list[str]]
) -> str | None:
    """One line saying why the installed release of `server` cannot run graceful (older
    than `oldest`, or lacking what `gaps` finds), or None."""
    if release(installed) < oldest:
        first = ".".join(map(str, oldest))
        return f"{server} {installed} is older than {first}, the oldest graceful supports"
    missing = gaps()
    if missing:
        return f"{server} {installed} lacks what graceful relies on: {'; '.join(missing)}"
    return None
