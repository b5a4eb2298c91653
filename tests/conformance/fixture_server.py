"""Conformance fixture for the official MCP conformance suite, on the official Python SDK.

`@modelcontextprotocol/conformance server --url ...` expects the server under test to
expose a fixed set of `test_*` tools, resources and prompts (see the scenario
descriptions in `conformance list` / the package's dist/index.js). This module is that
server, written on `mcp` 2.x (`MCPServer`, the old FastMCP), served as an ASGI app:

    # as a ringmux child (one process per rollout key):
    ringmux serve -- .venv/bin/python -m uvicorn --fd 3 --app-dir tests/conformance fixture_server:app
    # directly:
    .venv/bin/python -m uvicorn --port 3001 --app-dir tests/conformance fixture_server:app

All state (the SSE event store used for resumability, resource subscriptions, the
logging level) lives in module globals, i.e. per process, so with ringmux it is per
rollout.

Scenario -> what serves it here:
  server-initialize, ping, tools-list, resources-list, prompts-list  protocol level
  logging-set-level              logging/setLevel handler (also advertises `logging`)
  completion-complete            @server.completion() (advertises `completions`)
  tools-call-simple-text         test_simple_text
  tools-call-image               test_image_content
  tools-call-audio               test_audio_content
  tools-call-embedded-resource   test_embedded_resource
  tools-call-mixed-content       test_multiple_content_types
  tools-call-with-logging        test_tool_with_logging (3 info logs, ~50 ms apart)
  tools-call-error               test_error_handling (isError: true)
  tools-call-with-progress       test_tool_with_progress (0/50/100 of 100)
  tools-call-sampling            test_sampling(prompt) -> sampling/createMessage
  tools-call-elicitation         test_elicitation(message) -> elicitation/create
  elicitation-sep1034-defaults   test_elicitation_sep1034_defaults
  elicitation-sep1330-enums      test_elicitation_sep1330_enums
  json-schema-2020-12            json_schema_2020_12_tool ($schema/$defs/additionalProperties)
  server-sse-polling             test_reconnection (closes its POST SSE stream mid-call;
                                 the result is replayed on GET with Last-Event-ID)
  server-sse-multiple-streams    protocol level (stateful sessions, SSE responses)
  resources-read-text            test://static-text
  resources-read-binary          test://static-binary
  resources-templates-read       test://template/{id}/data
  resources-subscribe/-unsubscribe  resources/subscribe + resources/unsubscribe handlers
  prompts-get-simple             test_simple_prompt
  prompts-get-with-args          test_prompt_with_arguments(arg1, arg2)
  prompts-get-embedded-resource  test_prompt_with_embedded_resource(resourceUri)
  prompts-get-with-image         test_prompt_with_image
  dns-rebinding-protection       the SDK's default Host/Origin validation for a
                                 127.0.0.1 server (421 bad Host, 403 bad Origin)
"""

from __future__ import annotations

import asyncio
import base64
import collections
import itertools
import json
import warnings
from typing import Any

from pydantic import BaseModel, Field

warnings.filterwarnings("ignore", message=".*deprecated as of 2026-07-28.*")

from mcp.server import ServerRequestContext  # noqa: E402
from mcp.server.mcpserver import Context, MCPServer  # noqa: E402
from mcp.server.mcpserver.exceptions import ToolError  # noqa: E402
from mcp.server.mcpserver.prompts.base import UserMessage  # noqa: E402
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore  # noqa: E402
from mcp.types import (  # noqa: E402
    AudioContent,
    Completion,
    CompletionArgument,
    CompletionContext,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    JSONRPCMessage,
    PromptReference,
    ResourceTemplateReference,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)

# A 1x1 PNG and a minimal (empty-data) 8 kHz mono WAV.
PNG_1X1_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV_BASE64 = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="

LOG_LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]


# ---------------------------------------------------------------------------------------
# Per-process state
# ---------------------------------------------------------------------------------------
class _State:
    log_level: str = "debug"  # set by logging/setLevel; filters the fixture's own log messages
    subscriptions: set[str] = set()


STATE = _State()


class BoundedMemoryEventStore(EventStore):
    """In-memory SSE event store (resumability, SEP-1699), bounded to the last N events."""

    def __init__(self, max_events: int = 10_000) -> None:
        self._events: collections.deque[tuple[str, int, JSONRPCMessage | None]] = collections.deque(
            maxlen=max_events
        )
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        event_id = next(self._ids)
        self._events.append((stream_id, event_id, message))
        return str(event_id)

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        try:
            last = int(last_event_id)
        except ValueError:
            return None
        stream_id = next((s for s, i, _ in self._events if i == last), None)
        if stream_id is None:
            return None
        for s, i, message in list(self._events):
            if s == stream_id and i > last and message is not None:  # skip priming events
                await send_callback(EventMessage(message, str(i)))
        return stream_id


EVENT_STORE = BoundedMemoryEventStore()

server = MCPServer("ringmux-conformance-fixture", version="1.0.0", log_level="WARNING")


async def _log(ctx: Context, level: str, message: str) -> None:
    if LOG_LEVELS.index(level) >= LOG_LEVELS.index(STATE.log_level):
        await ctx.log(level, message)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------
@server.tool(description="Returns a simple text content block")
def test_simple_text() -> str:
    return "This is a simple text response for testing."


@server.tool(description="Returns an image content block (1x1 PNG)")
def test_image_content() -> list[ImageContent]:
    return [ImageContent(type="image", data=PNG_1X1_BASE64, mime_type="image/png")]


@server.tool(description="Returns an audio content block (WAV)")
def test_audio_content() -> list[AudioContent]:
    return [AudioContent(type="audio", data=WAV_BASE64, mime_type="audio/wav")]


@server.tool(description="Returns an embedded text resource")
def test_embedded_resource() -> list[EmbeddedResource]:
    return [
        EmbeddedResource(
            type="resource",
            resource=TextResourceContents(
                uri="test://embedded-resource",
                mime_type="text/plain",
                text="This is an embedded resource content.",
            ),
        )
    ]


@server.tool(description="Returns text, image and embedded-resource content together")
def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
    return [
        TextContent(type="text", text="Multiple content types test:"),
        ImageContent(type="image", data=PNG_1X1_BASE64, mime_type="image/png"),
        EmbeddedResource(
            type="resource",
            resource=TextResourceContents(
                uri="test://mixed-content-resource",
                mime_type="application/json",
                text=json.dumps({"test": "data", "value": 123}),
            ),
        ),
    ]


@server.tool(description="Sends three info log notifications ~50 ms apart while running")
async def test_tool_with_logging(ctx: Context) -> str:
    await _log(ctx, "info", "Tool execution started")
    await asyncio.sleep(0.05)
    await _log(ctx, "info", "Tool processing data")
    await asyncio.sleep(0.05)
    await _log(ctx, "info", "Tool execution completed")
    return "Tool with logging executed successfully"


@server.tool(description="Reports progress 0, 50, 100 of 100 (~50 ms apart) when given a progress token")
async def test_tool_with_progress(ctx: Context) -> str:
    for step, progress in enumerate((0, 50, 100)):
        if step:
            await asyncio.sleep(0.05)
        await ctx.report_progress(progress=progress, total=100, message=f"Completed step {progress} of 100")
    return "Tool with progress executed successfully"


@server.tool(description="Always fails: returns isError with a message")
def test_error_handling() -> str:
    raise ToolError("This tool intentionally returns an error for testing")


@server.tool(description="Asks the client for an LLM completion (sampling/createMessage)")
async def test_sampling(prompt: str, ctx: Context) -> str:
    result = await ctx.session.create_message(
        messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
        max_tokens=100,
        related_request_id=ctx.request_id,
    )
    content = result.content
    text = content.text if getattr(content, "type", None) == "text" else "(non-text response)"
    return f"LLM response: {text}"


class UserInfo(BaseModel):
    username: str = Field(description="User's response")
    email: str = Field(description="User's email address")


@server.tool(description="Asks the client for user input (elicitation/create)")
async def test_elicitation(message: str, ctx: Context) -> str:
    result = await ctx.elicit(message=message, schema=UserInfo)
    content = result.data.model_dump_json() if result.action == "accept" else "{}"
    return f"User response: action={result.action}, content={content}"


async def _elicit_raw(ctx: Context, message: str, schema: dict[str, Any]) -> str:
    result = await ctx.session.elicit_form(
        message=message, requested_schema=schema, related_request_id=ctx.request_id
    )
    return f"Elicitation completed: action={result.action}, content={json.dumps(result.content or {})}"


SEP1034_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "User status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
    "required": [],
}


@server.tool(description="Elicitation whose schema has defaults for every primitive type (SEP-1034)")
async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
    return await _elicit_raw(ctx, "Please provide user information (defaults provided)", SEP1034_SCHEMA)


SEP1330_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "untitledSingle": {
            "type": "string",
            "description": "Untitled single-select",
            "enum": ["option1", "option2", "option3"],
        },
        "titledSingle": {
            "type": "string",
            "description": "Titled single-select",
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ],
        },
        "legacyEnum": {
            "type": "string",
            "description": "Legacy titled enum (enumNames, deprecated)",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {
            "type": "array",
            "description": "Untitled multi-select",
            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
        },
        "titledMulti": {
            "type": "array",
            "description": "Titled multi-select",
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    },
    "required": [],
}


@server.tool(description="Elicitation with all five enum schema variants (SEP-1330)")
async def test_elicitation_sep1330_enums(ctx: Context) -> str:
    return await _elicit_raw(ctx, "Please select values using different enum schema types", SEP1330_SCHEMA)


@server.tool(description="Closes its own SSE response stream mid-call; the result arrives after reconnection")
async def test_reconnection(ctx: Context) -> str:
    await _log(ctx, "info", "Before disconnect")
    await ctx.close_sse_stream()
    await asyncio.sleep(0.2)  # the client reconnects (GET + Last-Event-ID) meanwhile
    await _log(ctx, "info", "After reconnect")
    return "Reconnection test completed"


@server.tool(name="json_schema_2020_12_tool", description="Tool with JSON Schema 2020-12 features")
def json_schema_2020_12_tool(name: str | None = None, address: dict[str, Any] | None = None) -> str:
    return f"name={name!r} address={address!r}"


# The advertised inputSchema must keep $schema, $defs and additionalProperties verbatim
# (SEP-1613); argument validation still uses the function signature.
_json_schema_tool = server._tool_manager.get_tool("json_schema_2020_12_tool")  # pyright: ignore[reportPrivateUsage]
assert _json_schema_tool is not None
_json_schema_tool.parameters = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
}


# ---------------------------------------------------------------------------------------
# Resources
# ---------------------------------------------------------------------------------------
@server.resource("test://static-text", name="static-text", description="A static text resource", mime_type="text/plain")
def static_text() -> str:
    return "This is the content of the static text resource."


@server.resource(
    "test://static-binary", name="static-binary", description="A static binary resource (PNG)", mime_type="image/png"
)
def static_binary() -> bytes:
    return base64.b64decode(PNG_1X1_BASE64)


@server.resource(
    "test://template/{id}/data",
    name="template-data",
    description="A resource template with parameter substitution",
    mime_type="application/json",
)
def template_data(id: str) -> str:
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@server.resource(
    "test://watched-resource", name="watched-resource", description="A resource to subscribe to", mime_type="text/plain"
)
def watched_resource() -> str:
    return "Watched resource content"


# ---------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------
@server.prompt(description="A simple prompt without arguments")
def test_simple_prompt() -> list[UserMessage]:
    return [UserMessage(TextContent(type="text", text="This is a simple prompt for testing."))]


@server.prompt(description="A prompt with two required arguments")
def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
    return [UserMessage(TextContent(type="text", text=f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"))]


@server.prompt(description="A prompt that embeds a resource")
def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:  # noqa: N803 (spec'd name)
    return [
        UserMessage(
            EmbeddedResource(
                type="resource",
                resource=TextResourceContents(
                    uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."
                ),
            )
        ),
        UserMessage(TextContent(type="text", text="Please process the embedded resource above.")),
    ]


@server.prompt(description="A prompt that includes an image")
def test_prompt_with_image() -> list[UserMessage]:
    return [
        UserMessage(ImageContent(type="image", data=PNG_1X1_BASE64, mime_type="image/png")),
        UserMessage(TextContent(type="text", text="Please analyze the image above.")),
    ]


# ---------------------------------------------------------------------------------------
# Protocol-level handlers MCPServer has no public decorator for
# ---------------------------------------------------------------------------------------
async def _set_logging_level(ctx: ServerRequestContext, params: SetLevelRequestParams) -> EmptyResult:
    STATE.log_level = params.level
    return EmptyResult()


async def _subscribe(ctx: ServerRequestContext, params: SubscribeRequestParams) -> EmptyResult:
    STATE.subscriptions.add(str(params.uri))
    return EmptyResult()


async def _unsubscribe(ctx: ServerRequestContext, params: UnsubscribeRequestParams) -> EmptyResult:
    STATE.subscriptions.discard(str(params.uri))
    return EmptyResult()


_lowlevel = server._lowlevel_server  # pyright: ignore[reportPrivateUsage]
_lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, _set_logging_level)
_lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, _subscribe)
_lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, _unsubscribe)

COMPLETIONS = {"arg1": ["paris", "park", "party"], "arg2": ["world", "wonder"], "id": ["1", "123"]}


@server.completion()
async def _complete(
    ref: PromptReference | ResourceTemplateReference,
    argument: CompletionArgument,
    context: CompletionContext | None,
) -> Completion:
    values = [v for v in COMPLETIONS.get(argument.name, []) if v.startswith(argument.value)]
    return Completion(values=values, total=len(values), has_more=False)


# Stateful Streamable HTTP (SSE responses), resumable via the event store; the default
# host 127.0.0.1 turns on the SDK's Host/Origin (DNS-rebinding) validation.
app = server.streamable_http_app(event_store=EVENT_STORE, retry_interval=100)
