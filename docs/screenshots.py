"""Screenshots of the dashboard for docs/OPERATIONS.md, taken with headless Chromium (Debian's package).

    make screenshots        (or: .venv/bin/python docs/screenshots.py)

In a temporary home: `alignflow server up`, `alignflow deploy` of the demo, one run of post-train/manual
(through the worker, as the dashboard's Run button would start it), then three pages: the run with its
artifacts, the deployment's run form, and the deployments list. Everything started is stopped at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
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


def run_manual(api_url: str) -> str:
    """Start post-train/manual through the API and wait until it ends; return the flow run id."""
    from prefect import get_client
    from prefect.settings import temporary_settings

    with temporary_settings(updates={"api.url": api_url}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("post-train/manual")
        run = client.create_flow_run_from_deployment(deployment.id)
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            state = client.read_flow_run(run.id).state
            if state and state.is_final():
                if not state.is_completed():
                    sys.exit(f"the demo run ended {state.name}: {state.message}")
                return str(run.id)
            time.sleep(5)
    sys.exit("the demo run did not finish within 30 minutes")


def capture(ui_url: str, run_id: str, deployment_id: str) -> None:
    from playwright.sync_api import sync_playwright

    IMAGES.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(f"{ui_url}/runs/flow-run/{run_id}")
        page.get_by_role("tab", name="Artifacts").click()
        page.get_by_text("demo-train-dpo-curves").first.wait_for(timeout=60000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(IMAGES / "flow-run.png"), full_page=True)

        page.goto(f"{ui_url}/deployments/deployment/{deployment_id}/run")
        page.get_by_text("beta").first.wait_for(timeout=60000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(IMAGES / "run-form.png"), full_page=True)

        page.goto(f"{ui_url}/deployments")
        page.get_by_text("on-new-data").first.wait_for(timeout=60000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(IMAGES / "deployments.png"))
        browser.close()


def main() -> None:
    if not Path(CHROMIUM).exists():
        sys.exit("needs Debian's chromium package: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="alignflow-screenshots-") as tmp:
        home = Path(tmp)
        os.environ.update(ALIGNFLOW_HOME=str(home / "state"), PREFECT_HOME=str(home / "prefect"),
                          ALIGNFLOW_CACHE=str(home / "cache"))
        os.environ.pop("PREFECT_API_URL", None)
        try:
            alignflow("server", "up", "--port", "0")
            state = json.loads((home / "state" / "server" / "state.json").read_text())
            alignflow("deploy", "--store", str(home / "store"))
            run_id = run_manual(state["server"]["api_url"])
            from prefect import get_client
            from prefect.settings import temporary_settings

            with temporary_settings(updates={"api.url": state["server"]["api_url"]}), \
                    get_client(sync_client=True) as client:
                deployment_id = str(client.read_deployment_by_name("post-train/manual").id)
            capture(state["server"]["ui_url"], run_id, deployment_id)
        finally:
            subprocess.run([ALIGNFLOW, "serve", "stop", "--all"], capture_output=True)
            subprocess.run([ALIGNFLOW, "server", "down"], capture_output=True)
    print(f"wrote {', '.join(sorted(p.name for p in IMAGES.glob('*.png')))} to {IMAGES}")


if __name__ == "__main__":
    main()
