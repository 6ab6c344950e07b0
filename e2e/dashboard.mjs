// Opens the dashboard in headless Chromium, finds a subscription, pauses it, sees the status
// change, watches an appended event arrive in the live tail, checks the devices table (one online
// with its response time, one never heard) and its sorting, and saves a screenshot.
// Usage: node e2e/dashboard.mjs <base url> <screenshot.png> <append command...>
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";

const [base, screenshot, ...append] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.REEL_CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(base + "/");
  const row = page.locator('#subscriptions tr[data-id="reporter"]');
  await row.waitFor({ timeout: 10000 });
  const status = row.locator("td.status");
  // Reactivated by the test but run by no worker: the dashboard says so, and names no holder.
  if ((await status.textContent()) !== "active (no worker)") throw new Error("expected reporter to be active with no worker, saw " + (await status.textContent()));
  const holder = row.locator("td").nth(7);
  if ((await holder.textContent()) !== "-") throw new Error("expected no lease holder, saw " + (await holder.textContent()));
  await row.getByRole("button", { name: "pause" }).click();
  await page.waitForFunction(() => document.querySelector('#subscriptions tr[data-id="reporter"] td.status')?.textContent === "paused", null, { timeout: 10000 });
  await row.getByRole("button", { name: "reactivate" }).waitFor({ timeout: 10000 });
  execFileSync(append[0], append.slice(1));
  await page.locator("#tail div", { hasText: "LiveFromTest" }).waitFor({ timeout: 10000 });
  await page.locator("#category option[value=unit]").waitFor({ state: "attached", timeout: 10000 });
  await page.selectOption("#category", "unit");
  await page.locator("#streams li", { hasText: "unit-PL-1001" }).click();
  await page.locator("#events div").first().click();
  await page.locator("#detail").waitFor({ state: "visible", timeout: 10000 });
  const online = page.locator('#devices tr[data-device="PL-1001"]');
  await page.waitForFunction(() => document.querySelector('#devices tr[data-device="PL-1001"] td.status')?.textContent === "Online", null, { timeout: 10000 });
  const cells = await online.locator("td").allTextContents();
  if (cells[1] !== "Station One" || cells[3] !== "12 ms" || cells[5] !== "a few seconds ago" || !cells[4].includes("(v2)") || cells[7] !== "agent") throw new Error("unexpected online row: " + cells.join(" | "));
  const never = await page.locator('#devices tr[data-device="PL-0999"] td').allTextContents();
  if (never[2] !== "Offline" || never[3] !== "Offline" || never[5] !== "never" || never[7] !== "push") throw new Error("unexpected offline row: " + never.join(" | "));
  const order = async () => page.locator("#devices tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.device));
  if ((await order()).join() !== "PL-0999,PL-1001") throw new Error("expected name order, saw " + (await order()));
  await page.locator('#devices th[data-sort="device"]').click();
  await page.waitForFunction(() => document.querySelector("#devices tbody tr")?.dataset.device === "PL-1001", null, { timeout: 10000 });
  await page.screenshot({ path: screenshot, fullPage: true });
  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  console.log("dashboard ok");
} finally {
  await browser.close();
}
