"""OpenAPI links between operations (what one answer feeds into the next), so schemathesis' stateful phase
can chain them: list the models, then chat with one, load it, unload it, load it again; store feedback, then
delete it. Links whose operations are not in the schema are left out."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from loradock.core.settings import Settings

# (source path, method, status) -> {link name: (target path, method, link fields)}
LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, dict[str, Any]]]] = {
    ("/v1/models", "get", "200"): {
        "ChatWithAListedModel": ("/v1/chat/completions", "post",
                                 {"requestBody": {"model": "$response.body#/data/0/id"}}),
        "ChatWithAListedAdapter": ("/v1/chat/completions", "post",
                                   {"requestBody": {"model": "$response.body#/data/1/id"}}),
        "CompleteWithAListedModel": ("/v1/completions", "post",
                                     {"requestBody": {"model": "$response.body#/data/0/id"}}),
        "LoadAListedAdapter": ("/v1/load_lora_adapter", "post",
                               {"requestBody": {"lora_name": "$response.body#/data/1/id"}}),
        "UnloadAListedAdapter": ("/v1/unload_lora_adapter", "post",
                                 {"requestBody": {"lora_name": "$response.body#/data/1/id"}}),
        "VersionsOfAListedAdapter": ("/v1/adapters/{name}/versions", "get",
                                     {"parameters": {"path.name": "$response.body#/data/1/id"}}),
    },
    ("/v1/load_lora_adapter", "post", "200"): {
        "ChatWithTheLoadedAdapter": ("/v1/chat/completions", "post",
                                     {"requestBody": {"model": "$request.body#/lora_name"}}),
        "UnloadTheLoadedAdapter": ("/v1/unload_lora_adapter", "post",
                                   {"requestBody": {"lora_name": "$request.body#/lora_name"}}),
    },
    ("/v1/unload_lora_adapter", "post", "200"): {
        "ChatWithTheUnloadedAdapter": ("/v1/chat/completions", "post",
                                       {"requestBody": {"model": "$request.body#/lora_name"}}),
        "LoadItAgain": ("/v1/load_lora_adapter", "post", {"requestBody": {"lora_name": "$request.body#/lora_name"}}),
    },
    ("/v1/feedback", "post", "200"): {
        "DeleteTheStoredRecord": ("/v1/feedback/{record_id}", "delete",
                                  {"parameters": {"path.record_id": "$response.body#/id"}}),
    },
}


def _ref(path: str, method: str) -> str:
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


def with_links(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with :data:`LINKS` added to the responses they start from."""
    paths = schema.get("paths", {})
    for (path, method, status), links in LINKS.items():
        response = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        for name, (target, target_method, fields) in links.items():
            if target_method in paths.get(target, {}):
                response.setdefault("links", {})[name] = {"operationRef": _ref(target, target_method), **fields}
    return schema


def _integer_branch(prop: dict[str, Any]) -> dict[str, Any] | None:
    if prop.get("type") == "integer":
        return prop
    return next((b for b in prop.get("anyOf", []) if b.get("type") == "integer"), None)


def with_limits(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """State this server's own limits in the request schemas (max_tokens cap, n, messages), and which fields
    need which, so clients and fuzzers see the bounds the server enforces."""
    components = schema.get("components", {}).get("schemas", {})
    caps = {"max_tokens": settings.max_tokens_cap, "max_completion_tokens": settings.max_tokens_cap,
            "min_tokens": settings.max_tokens_cap, "n": settings.max_n}
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        props = components.get(name, {}).get("properties", {})
        for field, cap in caps.items():
            branch = _integer_branch(props.get(field, {}))
            if branch is not None:
                branch["maximum"] = cap
        if "messages" in props:
            props["messages"]["maxItems"] = settings.max_messages
        needs = {"stream_options": {"stream": {"const": True}}, "top_logprobs": {"logprobs": {"const": True}}}
        components.get(name, {})["dependentSchemas"] = {
            field: {"properties": need, "required": list(need)} for field, need in needs.items() if field in props}
    return schema


def install_links(app: FastAPI, settings: Settings) -> None:
    """Serve the OpenAPI schema with :data:`LINKS` and this server's limits (built once, like FastAPI's)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_limits(with_links(build()), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
