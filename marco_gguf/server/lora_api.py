"""llama-server's LoRA endpoints: GET /lora-adapters lists the adapters `serve --lora` loaded
([{"id", "path", "scale"}], scale: what a request that sets none runs with), POST /lora-adapters sets those
scales ([{"id", "scale"}]); a completion's `lora` field ([{"id", "scale"}]) sets them for that request alone
(openai_api.parse_scales reads both lists). As in llama-server (construct_lora_list), an adapter a list
leaves out runs at scale 0, and an empty per-request list means the server's scales.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from marco_gguf.base.errors import RequestError
from marco_gguf.base.jsonfields import json_text
from marco_gguf.llama.engine import Engine
from marco_gguf.server.openai_api import LORA_ENTRIES, parse_scales


def adapter_list(engine: Engine) -> list[dict[str, Any]]:
    """The adapters and their server-wide scales, in llama-server's shape (GET /lora-adapters, /props)."""
    return [
        {"id": i, "path": str(f.path), "scale": scale}
        for i, (f, scale) in enumerate(zip(engine.adapters.files, engine.lora_scales))
    ]


async def lora_adapters(request: Request) -> Response:
    """GET lists the adapters, POST sets their scales (one route, so that a 405 names both methods)."""
    engine: Engine = request.app.state.marco.ready()
    if request.method != "POST":
        return JSONResponse(adapter_list(engine))
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON ({e})", f"send {LORA_ENTRIES}") from None
    if not isinstance(data, list):
        raise RequestError(f"the request body is {json_text(data)}, expected {LORA_ENTRIES}")
    engine.set_lora_scales(parse_scales(data, len(engine.adapters.files), "body"))
    return JSONResponse({"success": True})
