"""Drives an MCP server with the official MCP Python SDK, for tests/mcp.rs.

    drive.py http URL TOKEN < steps.json      Streamable HTTP, with a bearer token
    drive.py stdio COMMAND [ARG...] < steps.json   a server on stdio (env passed on)

steps.json is a list of steps, run in order in one session:
    {"op": "tools"}                          list the tools
    {"op": "call", "tool": NAME, "args": {}} call a tool
Prints one JSON document: {"server": {...}, "results": [...]}, a result per step:
    {"tools": [{"name", "description", "inputSchema"}]}
    {"isError": bool, "text": "...", "structured": {...} or null}
    {"protocolError": {"code": N, "message": "..."}}   the server refused the request
or {"connectError": "..."} when no session could be opened (a refused token, say).
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError


async def run_steps(session, steps):
    init = await session.initialize()
    results = []
    for step in steps:
        if step["op"] == "tools":
            listed = await session.list_tools()
            results.append({"tools": [
                {"name": t.name, "description": t.description, "inputSchema": t.input_schema}
                for t in listed.tools
            ]})
        elif step["op"] == "call":
            try:
                res = await session.call_tool(step["tool"], step.get("args", {}))
            except MCPError as e:
                results.append({"protocolError": {"code": e.error.code, "message": e.error.message}})
                continue
            text = "\n".join(c.text for c in res.content if getattr(c, "type", "") == "text")
            results.append({"isError": bool(res.is_error), "text": text,
                            "structured": res.structured_content})
        else:
            raise ValueError(f"unknown step {step!r}")
    server = {"name": init.server_info.name, "version": init.server_info.version,
              "protocolVersion": init.protocol_version, "instructions": init.instructions}
    return {"server": server, "results": results}


async def over_http(url, token, steps):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with create_mcp_http_client(headers=headers) as http:
        async with streamable_http_client(url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                return await run_steps(session, steps)


async def over_stdio(command, args, steps):
    params = StdioServerParameters(command=command, args=args, env=dict(os.environ))
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            return await run_steps(session, steps)


def first_cause(error):
    """The innermost message of an exception group (anyio wraps transport errors)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}"


def main():
    steps = json.load(sys.stdin)
    mode = sys.argv[1]
    try:
        if mode == "http":
            out = asyncio.run(over_http(sys.argv[2], sys.argv[3], steps))
        elif mode == "stdio":
            out = asyncio.run(over_stdio(sys.argv[2], sys.argv[3:], steps))
        else:
            raise SystemExit(f"unknown mode {mode}")
    except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - reported to the test
        out = {"connectError": first_cause(e)}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
