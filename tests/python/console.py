"""Drives the operators' console (/ui) in Debian's chromium with Playwright.

Run by tests/console.rs, which starts the stack and passes BASE_URL, MASTER_KEY and SHOTS
(the screenshot directory). The first argument names the scenario. Lines starting with
"@" on stdout ask the Rust side for something (e.g. "@add-worker") and wait for its "ok"
on stdin; the last stdout line is a JSON summary the Rust test checks against the
database. Playwright's own browsers are never downloaded: chromium is the system one.
"""

import json
import os
import sys
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

BASE = os.environ["BASE_URL"]
MASTER = os.environ["MASTER_KEY"]
SHOTS = os.environ["SHOTS"]
WAIT_MS = 90_000
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def http(method, path, key, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def submit(key, model="fast", priority="normal", stream=False, text="Tell me about rivers."):
    status, body = http("POST", "/v1/jobs", key, {
        "model": model, "priority": priority, "stream": stream,
        "messages": [{"role": "user", "content": text}],
    })
    assert status == 202, (status, body)
    return body["id"]


def ask(what):
    """Asks the Rust side to do something, and waits until it is done."""
    print(f"@{what}", flush=True)
    answer = sys.stdin.readline().strip()
    assert answer == "ok", answer


def shot(page, name):
    page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def sign_in(page, key):
    page.goto(BASE + "/ui")
    page.fill("#key", key)
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#nav")).to_be_visible()


def sign_out(page):
    page.click("#signout")
    expect(page.locator("#signin")).to_be_visible()


def text_of(page, selector):
    return page.locator(selector).inner_text().strip()


def wait_js(page, script, arg=None):
    return page.wait_for_function(script, arg=arg, timeout=WAIT_MS).json_value()


# ---------------------------------------------------------------- scenarios


def queue(page):
    """Queue depth per tier moves as jobs are submitted; a worker drains it; deferrals
    and rpm use show up live."""
    sign_in(page, MASTER)
    expect(page.locator("#depth-high")).to_have_text("0")
    expect(page.locator("#stat-worker-count")).to_have_text("0")
    high = [submit(MASTER, priority="high") for _ in range(3)]
    low = [submit(MASTER, priority="low") for _ in range(2)]
    expect(page.locator("#depth-high")).to_have_text("3")
    expect(page.locator("#depth-low")).to_have_text("2")
    expect(page.locator("#stat-total-depth")).to_have_text("5")
    shot(page, "overview-queued")

    # The jobs page lists them, and its filters narrow the list.
    page.goto(BASE + "/ui#/jobs")
    expect(page.locator("#job-rows tr[data-job]")).to_have_count(5)
    page.select_option("#job-filters select[name=priority]", "high")
    page.click("#job-filters button[type=submit]")
    expect(page.locator("#job-rows tr[data-job]")).to_have_count(3)
    listed = page.locator("#job-rows tr[data-job]").evaluate_all(
        "rows => rows.map(r => r.dataset.job)")
    assert sorted(listed) == sorted(high), (listed, high)
    page.select_option("#job-filters select[name=status]", "succeeded")
    page.click("#job-filters button[type=submit]")
    expect(page.locator("#job-rows tr[data-job]")).to_have_count(0)

    page.goto(BASE + "/ui#/overview")
    ask("add-worker")
    expect(page.locator("#stat-worker-count")).to_have_text("1")
    expect(page.locator("#depth-high")).to_have_text("0")
    expect(page.locator("#depth-low")).to_have_text("0")
    expect(page.locator("#stat-finished")).to_have_text("5")
    # Two jobs for a deployment that takes one request a minute: one waits (deferral).
    tight = [submit(MASTER, model="tight") for _ in range(2)]
    expect(page.locator("tr[data-reason=limit]")).to_be_visible()
    expect(page.locator("tr[data-deployment=tight-1] td").nth(3)).to_have_text("1 / 1")
    # A job for an overloaded deployment: the deployment cools down, the attempt says why.
    stormy = submit(MASTER, model="stormy")
    expect(page.locator("tr[data-cooling=storm-1]")).to_be_visible()
    shot(page, "overview")
    page.goto(BASE + f"/ui#/jobs/{stormy}")
    error_class = page.locator("#attempts tr[data-attempt='1'] td.error-class")
    expect(error_class).not_to_have_text("")
    shot(page, "job-attempt-failed")
    return {"high": high, "low": low, "tight": tight, "stormy": stormy,
            "error_class": error_class.inner_text().strip()}


def stream(page):
    """A running job's tokens appear as they stream; a job is cancelled from its page."""
    sign_in(page, MASTER)
    watched = submit(MASTER, stream=True)
    page.goto(BASE + f"/ui#/jobs/{watched}")
    # Some tokens on screen while the job still runs: they arrived live.
    seen = wait_js(page, """() => {
        const out = document.querySelector('#job-output');
        const status = document.querySelector('#job-status [data-status]');
        const n = Number(out?.dataset.chunks || 0);
        return n >= 3 && status && status.dataset.status === 'running'
            ? {chunks: n, words: out.textContent.trim().split(/\\s+/).length} : null;
    }""")
    assert seen["chunks"] < 160, seen
    shot(page, "job-streaming")
    expect(page.locator("#job-status [data-status]")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#attempts tr[data-attempt='1']")).to_be_visible()
    final_words = len(text_of(page, "#job-output").split())
    shot(page, "job")

    cancelled = submit(MASTER, stream=True, text="A long one, please.")
    page.goto(BASE + f"/ui#/jobs/{cancelled}")
    wait_js(page, "() => Number(document.querySelector('#job-output')?.dataset.chunks || 0) >= 1")
    page.click("#job-cancel")
    expect(page.locator("#job-status [data-status]")).to_have_attribute("data-status", "cancelled")
    shot(page, "job-cancelled")
    return {"watched": watched, "live": seen, "final_words": final_words, "cancelled": cancelled}


def batch(page):
    """A batch's progress bar and counts move; it is cancelled from the console; its
    output and error files download."""
    from openai import OpenAI

    client = OpenAI(base_url=BASE + "/v1", api_key=MASTER, max_retries=0)
    lines = "".join(
        json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "fast", "messages": [{"role": "user", "content": f"line {i}"}]}})
        + "\n" for i in range(40))
    f = client.files.create(file=("lines.jsonl", lines.encode()), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    sign_in(page, MASTER)
    page.goto(BASE + "/ui#/batches")
    row = page.locator(f"tr[data-batch='{b.id}']")
    progress = wait_js(page, """(id) => {
        const row = document.querySelector(`tr[data-batch='${id}']`);
        if (!row) return null;
        const [done, total] = row.querySelector('td.done').textContent.split('/').map(s => Number(s.trim()));
        const eta = row.querySelector('td.eta').textContent;
        return done >= 2 && done < total ? {done, total, eta, status: row.dataset.status} : null;
    }""", b.id)
    assert progress["status"] == "in_progress", progress
    assert progress["eta"] not in ("", "—"), progress
    shot(page, "batch-progress")
    row.locator("button[data-cancel-batch]").click()
    expect(row).to_have_attribute("data-status", "cancelled")
    completed = int(row.get_attribute("data-completed"))
    cancelled = int(row.get_attribute("data-cancelled"))
    shot(page, "batch-cancelled")
    files = {}
    for kind in ("output", "errors"):
        with page.expect_download() as d:
            row.locator(f"button[data-download={kind}]").click()
        path = os.path.join(SHOTS, f"batch-{kind}.jsonl")
        d.value.save_as(path)
        with open(path) as fh:
            files[kind] = [json.loads(l) for l in fh if l.strip()]
    return {"batch": b.id, "progress": progress, "completed": completed, "cancelled": cancelled,
            "output_lines": len(files["output"]), "error_lines": len(files["errors"]),
            "error_codes": sorted({l["error"]["code"] for l in files["errors"] if l.get("error")})}


def keys(page):
    """Keys are made and revoked from the console; a virtual key sees only its own jobs,
    enforced by the API."""
    page.on("dialog", lambda d: d.accept())
    sign_in(page, MASTER)
    page.goto(BASE + "/ui#/keys")
    made = {}
    for name in ("team-a", "team-b"):
        page.fill("#key-form input[name=name]", name)
        page.fill("#key-form input[name=rpm_limit]", "100")
        page.fill("#key-form input[name=max_budget]", "5")
        page.fill("#key-form input[name=budget_duration]", "30d")
        page.click("#key-form button[type=submit]")
        secret = page.locator("#new-key")
        expect(page.locator(f"#keys tr td:nth-child(2)", has_text=name)).to_be_visible()
        made[name] = {"key": secret.inner_text().strip(), "id": secret.get_attribute("data-key-id")}
    # A batch of the master's, which team-a must not see.
    from openai import OpenAI

    master_client = OpenAI(base_url=BASE + "/v1", api_key=MASTER, max_retries=0)
    line = json.dumps({"custom_id": "only", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}})
    f = master_client.files.create(file=("one.jsonl", (line + "\n").encode()), purpose="batch")
    master_batch = master_client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id
    mine = [submit(made["team-a"]["key"]) for _ in range(2)]
    others = [submit(MASTER), submit(made["team-b"]["key"])]
    for j in mine + others:
        for _ in range(300):
            status, body = http("GET", f"/v1/jobs/{j}", MASTER)
            if body["status"] == "succeeded":
                break
            page.wait_for_timeout(200)
        assert body["status"] == "succeeded", body
    page.goto(BASE + "/ui#/keys")
    expect(page.locator(f"#keys tr[data-key='{made['team-a']['id']}']")).to_contain_text("$")
    shot(page, "keys")
    page.goto(BASE + "/ui#/spend")
    expect(page.locator("[data-spend=model] svg rect.val").first).to_be_visible()
    expect(page.locator("[data-spend=key] svg rect.val")).to_have_count(3)
    expect(page.locator("[data-spend=key] svg")).to_contain_text("team-a")
    spend_total = text_of(page, "#stat-spend-total")
    shot(page, "spend")
    sign_out(page)

    # A virtual key: its own jobs only, no keys page, no operator views.
    sign_in(page, made["team-a"]["key"])
    assert page.evaluate("() => localStorage.length") == 0
    assert page.evaluate("() => sessionStorage.getItem('sluice.key')") == made["team-a"]["key"]
    expect(page.locator("#who")).to_contain_text("team-a")
    expect(page.locator("#nav a[data-page=keys]")).to_be_hidden()
    expect(page.locator("#nav a[data-page=overview]")).to_be_hidden()
    expect(page.locator("#job-rows tr[data-job]")).to_have_count(2)
    listed = page.locator("#job-rows tr[data-job]").evaluate_all("rows => rows.map(r => r.dataset.job)")
    assert sorted(listed) == sorted(mine), (listed, mine)
    shot(page, "virtual-key-jobs")
    # What the page could ask for directly, the API refuses or narrows.
    direct = page.evaluate("""async (others) => {
        const h = {Authorization: 'Bearer ' + sessionStorage.getItem('sluice.key')};
        const list = await (await fetch('/v1/jobs?key=master', {headers: h})).json();
        const other = await fetch('/v1/jobs/' + others[0], {headers: h});
        const keys = await fetch('/v1/keys', {headers: h});
        const overview = await fetch('/v1/overview', {headers: h});
        const spend = await (await fetch('/v1/spend?group_by=key', {headers: h})).json();
        const batches = await (await fetch('/v1/batches', {headers: h})).json();
        return {master_jobs: list.data.length, other_job: other.status, keys: keys.status,
                overview: overview.status, spend_groups: spend.data.map(r => r.group),
                batches: batches.data.length};
    }""", others)
    page.goto(BASE + "/ui#/batches")
    expect(page.locator("#batches")).to_contain_text("No batches yet")
    expect(page.locator(f"tr[data-batch='{master_batch}']")).to_have_count(0)
    page.goto(BASE + "/ui#/keys")
    expect(page.locator("#main")).to_contain_text("needs the master key")
    sign_out(page)

    # Revoking from the console locks the key out.
    sign_in(page, MASTER)
    page.goto(BASE + "/ui#/keys")
    page.click(f"button[data-revoke='{made['team-b']['id']}']")
    expect(page.locator(f"#keys tr[data-key='{made['team-b']['id']}']")).to_have_count(0)
    sign_out(page)
    page.fill("#key", made["team-b"]["key"])
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#signin-error")).to_contain_text("not accepted")
    return {"keys": {n: v["id"] for n, v in made.items()}, "mine": mine, "others": others,
            "listed": listed, "direct": direct, "spend_total": spend_total}


SCENARIOS = {"queue": queue, "stream": stream, "batch": batch, "keys": keys}


def main():
    scenario = SCENARIOS[sys.argv[1]]
    os.makedirs(SHOTS, exist_ok=True)
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        page.set_default_timeout(WAIT_MS)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            result = scenario(page)
        except Exception:
            shot(page, f"{sys.argv[1]}-failure")
            raise
        finally:
            browser.close()
        assert not errors, f"errors in the page: {errors}"
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
