"""Run an ArgoCD health script the way ArgoCD runs a custom one: Lua 5.1 without string, math, io,
debug or coroutine, and os cut down to time and date."""

from __future__ import annotations

import json
from typing import Any

from lupa import lua51

LuaError = lua51.LuaError

SANDBOX = """
local os_time, os_date = os.time, os.date
getmetatable("").__index = nil  -- no ("x"):upper() either: the string library is absent in ArgoCD
string, math, io, debug, coroutine = nil, nil, nil, nil, nil
os = {time = os_time, date = os_date}
"""


def run_health(script: str, obj: dict[str, Any]) -> dict[str, str]:
    """The {status, message} the script returns for obj; raises lupa's LuaError where ArgoCD would fail."""
    runtime = lua51.LuaRuntime(register_eval=False, register_builtins=False, unpack_returned_tuples=True)
    runtime.execute(SANDBOX)
    # ArgoCD hands the script the object as decoded JSON: strings, numbers, booleans, tables.
    plain = json.loads(json.dumps(obj, default=str))
    runtime.globals().obj = runtime.table_from(plain, recursive=True)
    result = runtime.execute(script)
    if result is None:
        return {}
    return {str(k): str(v) for k, v in result.items()}
