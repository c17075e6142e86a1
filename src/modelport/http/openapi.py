"""The answers every route can give besides its own, written into the OpenAPI document.

A route documents what its handler answers (a 409 for a name taken, a 400 for a file that is
not a model). What the layers around it answer is the same for every route and follows from
what the route depends on, so it is added here once, from the route's dependencies:

- a route that identifies its caller answers 401 for credentials it does not accept (or for none,
  where signing in is required), 429 past the caller's rate limit and 503 while the accounts'
  database is unreachable; a route that needs a scope or a role answers 403 to a caller without it;
  a route anyone may call without credentials says so (an empty security requirement);
- a route with a body answers 400 for a body that cannot be read, 413 past the body limit and
  422 for a body that breaks a rule;
- a route with a path parameter answers 404 for what it names when that does not exist or is not
  the caller's to see.

Every error has one shape (``http.errors``): ``{"detail": ..., "request_id": ...}``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import fastapi.routing
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from modelport.auth.dependencies import (
    CALLER_CHECKS,
    get_principal,
    optional_operator,
    require_admin,
    require_operator,
    require_user,
)
from modelport.settings import Settings

ERROR_SCHEMA_NAME = "Error"
ERROR_SCHEMA: dict[str, Any] = {
    "title": ERROR_SCHEMA_NAME,
    "type": "object",
    "required": ["detail", "request_id"],
    "properties": {
        "detail": {
            "title": "Detail",
            "description": "What went wrong, written for the caller: a message, or a list of "
            "{loc, msg, type} naming each field and the rule it breaks.",
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}],
        },
        "request_id": {
            "title": "Request Id",
            "type": "string",
            "description": "Quote it when reporting a problem.",
        },
    },
}
_ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_SCHEMA_NAME}"}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "string"}}
}


def document_common_responses(app: FastAPI, settings: Settings) -> None:
    """Make ``app.openapi()`` list, on each operation, the answers its dependencies can give."""
    build = app.openapi
    described: list[int] = []

    def openapi() -> dict[str, Any]:
        document = build()  # FastAPI's own, cached until the routes change
        if id(document) not in described:
            _describe(document, app, settings)
            described[:] = [id(document)]
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _api_routes(app: FastAPI) -> Iterator[Any]:
    """Each API route with its full path, whether included from a router or not."""
    iter_route_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    routes = iter_route_contexts(app.routes) if iter_route_contexts else app.routes
    for route in routes:
        if isinstance(getattr(route, "original_route", route), APIRoute):
            yield route


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route serves at ``path`` (a 405's Allow header names them all, not
    only those of the first route that matched the path)."""
    methods: set[str] = set()
    for route in _api_routes(app):
        if route.path_regex.match(path):
            methods.update(route.methods or ())
    return sorted(methods)


def _describe(document: dict[str, Any], app: FastAPI, settings: Settings) -> None:
    document.setdefault("components", {}).setdefault("schemas", {})[ERROR_SCHEMA_NAME] = (
        ERROR_SCHEMA
    )
    for route in _api_routes(app):
        if not route.include_in_schema:
            continue
        # Dependencies, and the caller checks a route makes itself (auth.dependencies).
        calls = set(_calls(route.dependant)) | set(getattr(route.endpoint, CALLER_CHECKS, ()))
        for method in route.methods:
            operation = document["paths"].get(route.path_format, {}).get(method.lower())
            if operation is not None:
                _describe_operation(operation, route.path_format, calls, settings)


def _describe_operation(
    operation: dict[str, Any], path: str, calls: set[Callable[..., Any]], settings: Settings
) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    identifies_caller = bool(calls & {get_principal, optional_operator, require_operator}) or any(
        _is_caller_dependency(call) for call in calls
    )
    if identifies_caller:
        required = _sign_in_required(calls, settings)
        responses.setdefault(
            "401",
            {
                "description": "Not signed in, or the credentials sent are not accepted"
                if required
                else "The credentials sent are not accepted (this route needs none)"
            },
        )
        if _needs_scope_or_role(calls):
            responses.setdefault(
                "403", {"description": "The caller lacks the role or the API key the scope"}
            )
        responses.setdefault(
            "429",
            {"description": "The caller's rate limit is reached", "headers": _RETRY_AFTER},
        )
        responses.setdefault(
            "503",
            {
                "description": "The database is unreachable for now; retry later",
                "headers": _RETRY_AFTER,
            },
        )
        if not required and operation.get("security"):
            # Anyone may call it: credentials, when sent, only change what the answer holds.
            operation["security"] = [{}, *operation["security"]]
    if "requestBody" in operation:
        responses.setdefault(
            "400", {"description": "The body cannot be read (not JSON, not UTF-8)"}
        )
        responses.setdefault("413", {"description": "The body is larger than the limit"})
        responses.setdefault("422", {"description": "The body breaks a rule (named in detail)"})
    if "{" in path:
        responses.setdefault(
            "404", {"description": "Not found, or not the caller's to see (never told apart)"}
        )
    for status, response in responses.items():
        if status[:1] in ("4", "5") and "content" not in response:
            response["content"] = {"application/json": {"schema": _ERROR_REF}}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    pending = [dependant]
    while pending:
        current = pending.pop()
        if current.call is not None:
            yield current.call
        pending.extend(current.dependencies)


def _is_caller_dependency(call: Callable[..., Any]) -> bool:
    """A dependency made by ``auth.dependencies._caller``: it identifies the caller itself."""
    return getattr(call, "__qualname__", "") == "_caller.<locals>.dependency"


def _scope_rule(call: Callable[..., Any]) -> tuple[str, bool] | None:
    """``(scope, anonymous)`` of a dependency made by ``auth.dependencies.require_scope``."""
    if not _is_caller_dependency(call):
        return None
    check = inspect.getclosurevars(call).nonlocals.get("check")
    if check is None or getattr(check, "__qualname__", "") != "require_scope.<locals>.check":
        return None
    captured = inspect.getclosurevars(check).nonlocals
    return str(captured["scope"]), bool(captured["anonymous"])


def _sign_in_required(calls: set[Callable[..., Any]], settings: Settings) -> bool:
    if calls & {require_user, require_admin, require_operator}:
        return True
    # What an anonymous caller may do (auth.dependencies gives them these scopes).
    anonymous_scopes = {"read", "predict"} if settings.anonymous_predictions else {"read"}
    for call in calls:
        rule = _scope_rule(call)
        if rule is not None and (not rule[1] or rule[0] not in anonymous_scopes):
            return True
    return False


def _needs_scope_or_role(calls: set[Callable[..., Any]]) -> bool:
    if calls & {require_admin, require_operator}:
        return True
    return any(_scope_rule(call) is not None for call in calls)
