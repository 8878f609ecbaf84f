"""The dashboard shows a thinking model's answer, with its reasoning folded under it (issue 15.6). The result is
made the way a worker makes it: the OpenAI-format adapter reads the simulator's answer (M2.7 puts its reasoning
inline as <think>...</think>), and the job is finished by the worker's guarded transition."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect

from service.jobs import transitions
from service.pricing import PriceTable
from simulator.server import running_simulator
from tests.ui.conftest import Server
from workers.execution import success
from workers.providers import get_provider

QUESTION = "Which clause governs renewal?"


def test_answer_first_reasoning_folded_under_it(signed_in: Page, ui_server: Server) -> None:
    params = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 400}
    with httpx.Client(base_url=ui_server.url, headers={"Authorization": f"Bearer {ui_server.seed.key}"}) as api:
        r = api.post("/v1/jobs", json={"model": "MiniMax-M2.7", "format": "openai", "params": params})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
    with running_simulator() as sim, httpx.Client(timeout=30) as http:
        completion = get_provider("openai").call(
            client=http, base_url=sim + "/v1", api_key="sk-simulator", model="MiniMax-M2.7", params=params
        )
    assert "<think>" in completion.raw["choices"][0]["message"]["content"]  # inline, as M2.x sends it
    with ui_server.factory() as session:
        claim = transitions.claim(session, job_id=job_id, owner="ui-test", lease_seconds=60)
        assert claim is not None
        transitions.finish(session, claim=claim, outcome=success(completion), prices=PriceTable())
        session.commit()

    page = signed_in
    page.goto(f"/ui#/jobs/{job_id}")
    answer = page.get_by_label("Result text")
    expect(answer).to_have_text(completion.text)
    expect(answer).not_to_contain_text("<think>")
    expect(answer).not_to_contain_text("Simulated reasoning")
    folded = page.locator("details.reasoning")
    expect(folded).to_have_count(1)
    expect(folded).not_to_have_attribute("open", "")
    reasoning = page.get_by_label("Reasoning", exact=True)
    expect(reasoning).to_be_hidden()
    folded.locator("summary").click()
    expect(reasoning).to_be_visible()
    expect(reasoning).to_contain_text("Simulated reasoning")
