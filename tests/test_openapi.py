"""GET /openapi.json: a valid OpenAPI 3.1 document naming every route the server has, and the server held to
it by schemathesis (positive and negative requests generated from the document, bounded examples, loopback
only): no 5xx, no traceback, every status, content type and JSON body as documented."""

from __future__ import annotations

import json

import pytest
import schemathesis
from checkpoints import Spec
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from serving import LiveServer, live, request

from marco_gguf.llama.engine import Engine
from marco_gguf.server import ServerState, create_app, openapi

SPEC = Spec(dtype="f32")
EXAMPLES = 12  # per operation and mode: 11 operations x 2 modes in well under a minute on 2 cores


@pytest.fixture(scope="module")
def engine(converted):
    with Engine(converted(SPEC, "f32").path, ctx=512, parallel=2, threads=2) as e:
        yield e


@pytest.fixture(scope="module")
def server(engine):
    # generated requests ask for up to 2**31 tokens; the context (512) bounds each reply
    with LiveServer(ServerState(engine.info.path.name, engine=engine, max_tokens=8)) as s:
        yield s


def document(server) -> dict:
    status, headers, body = request(server.url, "GET", "/openapi.json")
    assert status == 200 and headers["content-type"] == "application/json"
    return json.loads(body)


@pytest.mark.parametrize("api_key", [None, "s3cret"], ids=["open", "with-key"])
def test_the_document_is_valid_openapi_3_1_and_names_every_route(engine, api_key):
    with live(engine, api_key=api_key) as s:
        doc = document(s)
    validate(doc)  # raises with the offending path when the document is not OpenAPI 3.1
    assert doc["openapi"] == "3.1.0"
    app = create_app(ServerState(engine.info.path.name, engine=engine))
    served = {getattr(r, "path", "") for r in app.routes}
    documented = {p.replace("/{file}", "").replace("/{model}", "/{model:path}") for p in doc["paths"]}
    assert served == documented, "every route served is documented, and nothing else"
    assert ("security" in doc) == (api_key is not None), "the key is documented when the server asks for one"


# the document as the server writes it (a pure function of whether a key is asked); the base URL is the server's
schema = schemathesis.openapi.from_dict(openapi.document(api_key=False))
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES, database="none"
)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_server_answers_every_generated_request_as_documented(case, server):
    # every check but positive_data_acceptance: what JSON Schema cannot say (tool_choice without tools, a prompt
    # longer than the context, ...) is a documented 400, whose body is still held to the Error schema
    case.call_and_validate(base_url=server.url, excluded_checks=[positive_data_acceptance])
