// The dashboard's first paint of the task list: from navigation (signed in by link)
// to the first task row on screen, in headless Chromium, over 5 fresh loads. Prints
// the median and the worst, and what the first load transferred. Run by
// bench/history.rs.
import { chromium } from "playwright-core";

const { SERVER, TOKEN } = process.env;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
try {
  const times = [];
  let transferred = 0;
  for (let i = 0; i < 5; i++) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    if (i === 0) page.on("response", async (r) => { try { transferred += (await r.body()).length; } catch (_) { /* a stream */ } });
    await page.goto(`${SERVER}/#token=${encodeURIComponent(TOKEN)}`);
    await page.waitForSelector("tr[data-task]", { timeout: 60000 });
    times.push(await page.evaluate(() => performance.now()));
    await context.close();
  }
  times.sort((a, b) => a - b);
  console.log(`first paint of the task list: median ${times[2].toFixed(0)} ms, worst ${times[4].toFixed(0)} ms (5 loads; ${(transferred / 1024).toFixed(0)} KiB on the first)`);
} finally {
  await browser.close();
}
