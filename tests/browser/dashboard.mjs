// The dashboard in real headless Chromium, driven by playwright-core. Started by
// tests/dashboard.rs, which runs the server and seeds it; this script signs in, looks,
// clicks, and exits non-zero on the first thing that is wrong. It asks the Rust side
// to restart the server by printing RESTART and waits for RESTARTED on stdin.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";

const { SERVER, TOKEN, OUT, TASK_CANCEL, TASK_WAITING, TASK_XSS, TASK_PLAN, TASK_BLOCKED, TASK_REVIEWED, WORKSPACE } = process.env;

mkdirSync(OUT, { recursive: true });
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

async function apiPost(path, body) {
  const res = await fetch(SERVER + path, {
    method: "POST",
    headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  check(res.ok, `POST ${path} → ${res.status}`);
  return res.json();
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const consoleErrors = [];
// The page on screen, to show when a check fails.
let shown = null;
let restarting = false;
function watch(page) {
  page.on("console", (m) => {
    // While the server is down, Chromium itself logs the refused connections.
    if (m.type() === "error" && !(restarting && m.text().startsWith("Failed to load resource"))) {
      consoleErrors.push(m.text());
    }
  });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
}

try {
  // ---- Sign in through the form, measuring what the first load transfers.
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  shown = page;
  watch(page);
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  let transferred = 0;
  cdp.on("Network.loadingFinished", (e) => { transferred += e.encodedDataLength; });
  await page.goto(SERVER + "/");
  await page.waitForSelector("input[name=token]");
  await page.screenshot({ path: `${OUT}/sign-in.png` });
  await page.fill("input[name=token]", TOKEN);
  await page.click("button[type=submit]");
  await page.waitForSelector(`tr[data-task="${TASK_CANCEL}"]`);
  await page.waitForSelector(".live.on");
  console.log(`PAGE_WEIGHT ${transferred}`);

  // ---- A live run's progress line shows under its title.
  check((await page.textContent(`tr[data-task="${TASK_WAITING}"] .progress`)) === "Reading the branches", "the progress line is listed");

  // ---- A title holding markup is shown as text, and nothing of it ran.
  const xssRow = page.locator(`tr[data-task="${TASK_XSS}"] td.title`);
  check((await xssRow.textContent()).includes("<script>"), "the <script> title is shown as text");
  check(await page.evaluate(() => window.__pwned === undefined), "the title's markup did not run");
  await page.screenshot({ path: `${OUT}/tasks.png`, fullPage: true });

  // ---- A task created through the API appears without a reload.
  await page.evaluate(() => { window.__sameDocument = true; });
  const created = await apiPost("/api/tasks", { workspaceId: WORKSPACE, title: "Created while watching" });
  await page.waitForSelector(`tr[data-task="${created.id}"]`, { timeout: 5000 });
  check(await page.evaluate(() => window.__sameDocument === true), "no reload happened");

  // ---- The counts are the server's, the list pages, and search asks the server.
  // The seeded tasks and the one created live: every one counted, 100 and the live
  // one listed until the next page is asked for.
  const total = Number(process.env.TASKS) + 1;
  await page.waitForFunction((n) => document.querySelector(".tabs button").textContent === `All ${n}`, total);
  check((await page.locator("tr[data-task]").count()) === 101, "the first page holds 100 tasks, and the new one");
  await page.click("text=Load more");
  await page.waitForFunction((n) => document.querySelectorAll("tr[data-task]").length === n, total);
  check(!(await page.isVisible("text=Load more")), "no more pages after the last");
  await page.fill("input[name=q]", "LOGIN PAGE");
  await page.click("form.search button");
  await page.waitForFunction(() => document.querySelectorAll("tr[data-task]").length === 1);
  check((await page.textContent("tr[data-task] td.title")).includes("Fix the login page"), "search found the task");
  await page.fill("input[name=q]", "");
  await page.click("form.search button");
  await page.waitForFunction(() => document.querySelectorAll("tr[data-task]").length === 100);

  // ---- The workflow statuses have their filters.
  await page.click('button[data-status="blocked"]');
  await page.waitForSelector(`tr[data-task="${TASK_BLOCKED}"]`);
  await page.click('button[data-status="planned"]');
  await page.waitForSelector(`tr[data-task="${TASK_PLAN}"]`);
  await page.click(".tabs button:first-child");

  // ---- Cancel from the page; the task waiting on it fails, shown live on its page.
  await page.goto(`${SERVER}/#/tasks/${TASK_BLOCKED}`);
  await page.waitForSelector(`#workflow [data-linked="${TASK_CANCEL}"]`);
  await page.click(`#workflow [data-linked="${TASK_CANCEL}"] a`);
  await page.waitForSelector("text=Cancel task");
  await page.click("text=Cancel task");
  await page.waitForSelector("h1 .s-cancelled");
  await page.goto(`${SERVER}/#/tasks/${TASK_BLOCKED}`);
  await page.waitForSelector("h1 .s-failed");

  // ---- Follow up the cancelled task from its page.
  // The failed task's page, still shown until the cancelled one's renders, has a
  // follow-up form too: wait for the cancelled task's own page before typing.
  await page.goto(`${SERVER}/#/tasks/${TASK_CANCEL}`);
  await page.waitForSelector("h1 .s-cancelled");
  await page.waitForSelector("#followup textarea");
  await page.fill("#followup textarea", "Try again with the new layout");
  await page.click("#followup button.primary");
  await page.waitForSelector("h1 >> text=Follow-up: Try again with the new layout");

  // ---- A plan, approved from its page: its steps become tasks, listed as children.
  await page.goto(`${SERVER}/#/tasks/${TASK_PLAN}`);
  await page.waitForSelector("#plan >> text=Build the search index");
  await page.screenshot({ path: `${OUT}/task-plan.png`, fullPage: true });
  await page.click("#plan button.primary");
  await page.waitForSelector("h1 .s-completed");
  await page.waitForSelector("#children li:nth-child(2)");
  check((await page.textContent("#children")).includes("Add the search box"), "the steps are listed");

  // ---- Review a finished run's change: comment on a line, send the review.
  await page.goto(`${SERVER}/#/tasks/${TASK_REVIEWED}`);
  await page.waitForSelector('#diff .l.add[data-path="src/app.js"][data-line="3"]');
  check((await page.textContent("#change h2")).includes("+2 −1"), "the change's counts are shown");
  check((await page.locator("#diff .l.del").count()) === 1, "the removed line is marked");
  await page.click('#diff .l[data-line="3"]');
  await page.fill(".comment-form textarea", "Why a new constant?");
  await page.click(".comment-form button.primary");
  await page.waitForSelector("#review-comments >> text=src/app.js:3");
  await page.fill("textarea[name=summary]", "Keep it small.");
  await page.screenshot({ path: `${OUT}/review.png`, fullPage: true });
  await page.click("#review button.primary");
  await page.waitForSelector("h1 >> text=Follow-up");

  // ---- Schedules: the next run in its zone, paused from the page.
  await page.goto(`${SERVER}/#/schedules`);
  await page.waitForSelector(`tr[data-schedule="${process.env.SCHEDULE}"]`);
  const row = `tr[data-schedule="${process.env.SCHEDULE}"]`;
  check((await page.textContent(`${row} td[data-label="Cadence"]`)).includes("Europe/Paris"), "the zone is shown");
  check((await page.getAttribute(`${row} .next span`, "title")) !== null, "the next run is shown");
  await page.screenshot({ path: `${OUT}/schedules.png`, fullPage: true });
  await page.click(`${row} button`);
  await page.waitForSelector(`${row} >> text=Resume`);
  check((await page.textContent(`${row} .next`)).includes("paused"), "paused, with no next run");

  // ---- Agents: a laptop reports itself; its state and running task are shown.
  const reported = await fetch(`${SERVER}/api/agents/agt-dash`, {
    method: "PUT",
    headers: { Authorization: `Bearer ${process.env.ACCOUNT_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ hostname: "max-laptop", version: "0.1.0", runners: ["claude"],
      state: "outside_hours", running: [TASK_WAITING] }),
  });
  check(reported.ok, `PUT /api/agents/agt-dash → ${reported.status}`);
  await page.goto(`${SERVER}/#/agents`);
  const agentRow = 'tr[data-agent="agt-dash"]';
  await page.waitForSelector(agentRow);
  check((await page.textContent(`${agentRow} td[data-label="Host"]`)).includes("max-laptop"), "the host is shown");
  check((await page.textContent(`${agentRow} td[data-label="State"]`)).includes("outside its hours"), "the state is said in words");
  check((await page.textContent(`${agentRow} td[data-label="Running"]`)).includes("Pick a branch"), "its running task is named");
  await page.screenshot({ path: `${OUT}/agents.png`, fullPage: true });

  // ---- A task for a runner no connected agent has says so, until one has it.
  const forCodex = await apiPost("/api/tasks", { workspaceId: WORKSPACE, title: "Port to Codex",
    runner: "codex", model: "gpt-5.5", fallbackRunner: "claude" });
  await page.goto(`${SERVER}/#/tasks/${forCodex.id}`);
  await page.waitForSelector("#no-runner");
  check((await page.textContent("#no-runner")).includes("No connected agent runs codex"), "the missing runner is named");
  const facts = await page.textContent(".facts");
  check(facts.includes("codex") && facts.includes("gpt-5.5") && facts.includes("falls back to claude"), `runner, model and fallback are shown: ${facts}`);
  await page.screenshot({ path: `${OUT}/task-no-runner.png`, fullPage: true });
  const withCodex = await fetch(`${SERVER}/api/agents/agt-dash`, {
    method: "PUT",
    headers: { Authorization: `Bearer ${process.env.ACCOUNT_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ hostname: "max-laptop", version: "0.1.0", runners: ["claude", "codex"],
      state: "outside_hours", running: [TASK_WAITING] }),
  });
  check(withCodex.ok, `PUT /api/agents/agt-dash → ${withCodex.status}`);
  await page.waitForSelector("#no-runner", { state: "detached", timeout: 15000 });

  // ---- Answer a waiting task from the page; its output is on screen.
  await page.goto(`${SERVER}/#/tasks/${TASK_WAITING}`);
  await page.waitForSelector(".question");
  check((await page.textContent(".question")).includes("Which branch?"), "the question is shown");
  check((await page.textContent("table:has(tr[data-worker]) thead")).includes("Runner"), "workers show their runner");
  await page.waitForSelector("#output >> text=Looking at the repository");
  check((await page.textContent("#progress")) === "Reading the branches", "the progress line is on the task");
  await page.waitForSelector('#artifacts a[href="https://ci.example.com/runs/7"]');
  check((await page.textContent("#artifacts")).includes("docs/branches.md"), "the file the run recorded is listed");
  await page.screenshot({ path: `${OUT}/task-waiting.png`, fullPage: true });
  await page.fill("input[name=reply]", "use main");
  await page.click("form.row button[type=submit]");
  await page.waitForSelector("h1 .s-running");
  await page.waitForSelector("#output >> text=you: use main");
  // Output streams in as the agent sends it.
  const sent = await fetch(`${SERVER}/api/workers/${process.env.WORKER_WAITING}/messages`, {
    method: "POST",
    headers: { Authorization: `Bearer ${process.env.ACCOUNT_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ messages: [{ type: "output", text: "streamed <b>live</b>" }] }),
  });
  check(sent.ok, `messages → ${sent.status}`);
  await page.waitForSelector("#output >> text=streamed <b>live</b>");
  // A new progress line replaces the old one live.
  const progressed = await fetch(`${SERVER}/api/workers/${process.env.WORKER_WAITING}`, {
    method: "PATCH",
    headers: { Authorization: `Bearer ${process.env.ACCOUNT_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ progress: "Switching to main" }),
  });
  check(progressed.ok, `progress → ${progressed.status}`);
  await page.waitForSelector("#progress >> text=Switching to main");
  await page.waitForSelector('[data-worker] .progress >> text=Switching to main');
  // An instruction to the running worker lands in its output.
  await page.fill("input[name=instruct]", "also update the docs");
  await page.click("#instruct button[type=submit]");
  await page.waitForSelector("#output >> text=instruction: also update the docs");

  // ---- The server restarts; the page reconnects and keeps up.
  restarting = true;
  console.log("RESTART");
  const answer = await lines.next();
  check(answer.value === "RESTARTED", `the server restarted (${answer.value})`);
  const after = await apiPost("/api/tasks", { workspaceId: WORKSPACE, title: "Created after the restart" });
  await page.goto(`${SERVER}/#/`);
  await page.waitForSelector(".live.on", { timeout: 20000 });
  restarting = false;
  await page.waitForSelector(`tr[data-task="${after.id}"]`, { timeout: 10000 });
  const later = await apiPost("/api/tasks", { workspaceId: WORKSPACE, title: "Live after the restart" });
  await page.waitForSelector(`tr[data-task="${later.id}"]`, { timeout: 10000 });

  // ---- Create a task through the form.
  await page.click("text=New task");
  await page.fill("input[name=title]", "Made in the browser");
  await page.fill("textarea[name=description]", "Line one\nLine two");
  await page.click("button[type=submit]");
  await page.waitForSelector("h1 >> text=Made in the browser");

  // ---- Accounts and their load.
  await page.click("#nav-accounts");
  await page.waitForSelector('tr[data-account] td[data-usage="server"]');
  const load = await page.textContent('tr[data-account] td[data-usage="server"]');
  check(load.trim() === "1 / 3", `the account's workers, counted by the server (${load})`);
  await page.screenshot({ path: `${OUT}/accounts.png`, fullPage: true });
  await context.close();

  // ---- Signing in by link, on a phone-sized screen.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true });
  const mobile = await phone.newPage();
  watch(mobile);
  await mobile.goto(`${SERVER}/#token=${encodeURIComponent(TOKEN)}`);
  await mobile.waitForSelector(`tr[data-task="${TASK_WAITING}"]`);
  check(!(await mobile.evaluate(() => location.hash.includes("token"))), "the token left the address bar");
  const overflow = await mobile.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 1, `no sideways scrolling on a phone (${overflow}px)`);
  await mobile.screenshot({ path: `${OUT}/phone.png`, fullPage: true });
  await phone.close();

  check(consoleErrors.length === 0, `console errors: ${JSON.stringify(consoleErrors)}`);
  console.log("OK");
} catch (e) {
  console.error(e.stack || String(e));
  if (shown) {
    await shown.screenshot({ path: `${OUT}/failure.png`, fullPage: true }).catch(() => {});
    console.error(`on screen: ${await shown.textContent("main").catch(() => "?")}`);
  }
  if (consoleErrors.length) console.error(`console errors: ${JSON.stringify(consoleErrors)}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  process.exit();
}
