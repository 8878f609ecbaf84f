"""A MiniMax look-alike HTTP server: a peer for tests, benchmarks and the offline demo, not a mock.

It speaks the real wire protocol closely enough that the official ``anthropic`` and ``openai`` SDKs work
against it unchanged:

- ``POST /anthropic/v1/messages`` (plain and ``stream: true``), ``POST /anthropic/v1/messages/count_tokens``
- ``POST /v1/chat/completions`` (plain and ``stream: true``)
- ``POST /v1/files/upload``, ``GET /v1/files/retrieve``, ``GET /v1/files/list``, ``POST /v1/files/delete`` (the
  Files API; referenced in messages as ``mm_file://ID``, see ``simulator.files``)
- ``GET /_sim/ledger``, ``GET /_sim/stats``, ``GET|POST /_sim/config``, ``POST /_sim/reset``, ``GET /healthz``

Answers are deterministic (see ``simulator.tokens`` for the token-counting and answer rules): the text
contains ``SIM:`` plus the first 12 hex characters of sha256 of the last user message's text, and echoes its
first 60 characters.

Directives: put ``[[sim:KEY=VALUE]]`` anywhere in the last user message's text (several may be combined):

- ``[[sim:fault=KIND]]``: force a fault, KIND one of ``429``, ``500``, ``529``, ``base_resp``, ``midstream``,
  ``hang`` (the same behaviour the random faults have);
- ``[[sim:base_resp=CODE]]``: HTTP 200 whose ``base_resp.status_code`` is CODE, with no content or choices;
- ``[[sim:error=CODE]]``: the HTTP error the real API gives for that MiniMax code (2013 -> 400,
  1004/2049 -> 401, 1002/1039/1041/2045/2056 -> 429, 1008 and 1000-series -> 500, ...;
  see ``simulator.errors``);
- ``[[sim:latency=SECONDS]]``: the call's total duration;
- ``[[sim:output_tokens=N]]``: the answer's target length in tokens;
- ``[[sim:sensitive=input|output]]``: MiniMax's content filter trips: on ``/v1`` an empty answer with
  ``input_sensitive`` / ``output_sensitive`` set (billed for the prompt), on ``/anthropic`` a 400 (1026 / 1027).

Tools: a request with ``tools`` (and ``tool_choice`` not ``none``) gets a call to its first tool, the schema's
required arguments filled in (``tool_use`` / ``tool_calls``), unless its last message returns a tool result; then
it gets the usual text answer. ``M2-her`` (dialogue roles, no thinking, output up to 2,048) is served on ``/v1`` only.

A malformed or unknown directive is a 400 ``invalid_request_error`` (2013), so a typo cannot pass silently.

Order of checks for a call: auth (401) -> request validation (400) -> directives -> rate limit (429) ->
``error`` directive -> fault -> latency and answer. Delivered answers, midstream-broken ones and calls the
client closed before the end (billed for the prompt and the tokens generated until then) go to the ledger;
refused calls and hangs are not billed.
"""

from simulator.app import create_app
from simulator.config import SimulatorConfig
from simulator.server import run, running_simulator

__all__ = ["SimulatorConfig", "create_app", "run", "running_simulator"]
