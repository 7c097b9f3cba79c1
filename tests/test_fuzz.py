"""The whole HTTP API fuzzed from its OpenAPI schema by schemathesis: generated bodies, paths and
parameters, fitting the schema and not, and never a server error (5xx). Bounded to well under a
minute: a few examples per operation and mode, extractive answers (no LLM), over a private copy
of the seed index. (schemathesis's own pytest plugin does not run under pytest 9, so each
operation's strategy is driven by Hypothesis here.)"""

import shutil
from collections import Counter

import pytest
import schemathesis
from conftest import SEEDS, make_service, make_settings
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from rag.serve.api import create_api

pytestmark = pytest.mark.slow

EXAMPLES = 12  # per operation and generation mode


@pytest.fixture(scope="module")
def api_schema(seed_service, embedder, tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(seed_service.settings.index.dir, work / "index", symlinks=True)
    shutil.copytree(SEEDS, work / "corpus")
    service = make_service(
        make_settings(work / "index", corpus_dir=work / "corpus", answer={"model": "extractive"}), embedder
    )
    return schemathesis.openapi.from_asgi("/openapi.json", create_api(service))


def test_no_request_makes_a_server_error(api_schema) -> None:
    sent: Counter[tuple[str, str]] = Counter()
    for result in api_schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def fuzz(case) -> None:
                response = case.call()
                sent[operation.label, mode] += 1
                case.validate_response(response, checks=[not_a_server_error])

            try:
                fuzz()
            except Unsatisfiable:  # no input that breaks the schema (GET /health, any string as doc_id)
                assert mode == GenerationMode.NEGATIVE and not operation.body
    print(f"\nschemathesis: {sum(sent.values())} requests, {len(sent)} operation x mode pairs")
    assert {label for label, _ in sent} == {op.ok().label for op in api_schema.get_all_operations()}
    with_body = {op.ok().label for op in api_schema.get_all_operations() if op.ok().body}
    assert {label for label, mode in sent if mode == GenerationMode.NEGATIVE} >= with_body
