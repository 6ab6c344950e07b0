// The locker platform's web UI in headless Chromium, against `lockers demo` with a small fleet:
// the units table and its sorting; reserving a locker and seeing it unavailable; taking a unit
// offline and seeing it marked Offline, then back Online; its event log growing; the CSV
// export; availability per location. Saves a screenshot of each page.
// Usage: node e2e/lockers.mjs <base url> <screenshot dir>
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";
import { join } from "node:path";

const [base, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.REEL_CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox"],
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
try {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 }, acceptDownloads: true });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));

  // The units table: every unit, online with a response time, sortable by name.
  await page.goto(base + "/#/");
  await page.waitForFunction(() => document.querySelectorAll("#units tbody tr").length === 12, null, { timeout: 30000 });
  await page.waitForFunction(() => [...document.querySelectorAll("#units td.response")].every((td) => td.textContent.endsWith(" ms")), null, { timeout: 30000 });
  const names = async () => page.locator("#units tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.unit));
  if ((await names())[0] !== "PL-1000") throw new Error("expected name order, saw " + (await names()).join());
  await page.locator('#units th[data-sort="name"]').click();
  await page.waitForFunction(() => document.querySelector("#units tbody tr")?.dataset.unit === "PL-1011", null, { timeout: 10000 });
  const cells = await page.locator('#units tr[data-unit="PL-1001"] td').allTextContents();
  if (cells[0] !== "PL-1001" || cells[2] === "" || !cells[6].includes("ago")) throw new Error("unexpected row: " + cells.join(" | "));
  await page.screenshot({ path: join(shots, "lockers-units.png"), fullPage: true });

  // Reserve a free locker of PL-1001, confirm it, and see it taken.
  await page.goto(base + "/#/reserve");
  await page.fill("#reserve-form input[name=unit]", "PL-1001");
  await page.click("#load");
  await page.locator("#lockers .locker.free").first().waitFor({ timeout: 10000 });
  const locker = await page.locator("#lockers .locker.free").first().getAttribute("data-locker");
  await page.click(`#lockers .locker[data-locker="${locker}"]`);
  await page.click("#reserve");
  await page.waitForFunction(() => /: paid$/.test(document.getElementById("message").textContent), null, { timeout: 10000 });
  await page.click("#confirm");
  await page.waitForFunction(() => /: confirmed$/.test(document.getElementById("message").textContent), null, { timeout: 10000 });
  let taken = false;
  for (let i = 0; i < 40 && !taken; i++) {
    await page.click("#load");
    await sleep(500);
    taken = await page.locator(`#lockers .locker.taken[data-locker="${locker}"]`).count() === 1;
  }
  if (!taken) throw new Error(`locker ${locker} still shows free after the reservation`);
  await page.screenshot({ path: join(shots, "lockers-reserve.png"), fullPage: true });

  // A unit goes offline and comes back; its event log grows meanwhile.
  await page.goto(base + "/#/unit/PL-1002");
  await page.waitForFunction(() => document.getElementById("status-text")?.textContent === "Online", null, { timeout: 30000 });
  await page.waitForFunction(() => /Total of \d+ records/.test(document.getElementById("pager-text").textContent), null, { timeout: 10000 });
  const total = async () => Number((await page.locator("#pager-text").textContent()).match(/Total of (\d+)/)[1]);
  const before = await total();
  await page.click("#go-offline");
  await page.waitForFunction(() => document.getElementById("status-text")?.textContent === "Offline", null, { timeout: 30000 });
  await page.screenshot({ path: join(shots, "lockers-unit-offline.png"), fullPage: true });
  await page.goto(base + "/#/");
  await page.waitForFunction(() => document.querySelector('#units tr[data-unit="PL-1002"] td.response')?.textContent === "Offline", null, { timeout: 10000 });
  await page.goto(base + "/#/unit/PL-1002");
  await page.waitForSelector("#go-online", { timeout: 10000 });
  await page.click("#go-online");
  await page.waitForFunction(() => document.getElementById("status-text")?.textContent === "Online", null, { timeout: 30000 });
  await page.waitForFunction((n) => Number(document.getElementById("pager-text").textContent.match(/Total of (\d+)/)?.[1] ?? 0) > n, before, { timeout: 30000 });
  const occurrences = await page.locator("#log tbody td:nth-child(2)").allTextContents();
  if (!occurrences.length) throw new Error("the event log shows no rows");
  await page.screenshot({ path: join(shots, "lockers-unit.png"), fullPage: true });

  // The CSV export: a header and the unit's rows, HardwareOffline among them.
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#export")]);
  const csv = readFileSync(await download.path(), "utf8").trim().split("\n");
  if (csv[0] !== "position,location,occurrence,unit,locker,occurred,recorded") throw new Error("unexpected CSV header: " + csv[0]);
  if (csv.length < 3 || !csv.slice(1).every((line) => line.includes(",PL-1002,"))) throw new Error("unexpected CSV rows: " + csv.slice(0, 4).join(" / "));
  if (!csv.some((line) => line.includes(",HardwareOffline,"))) throw new Error("the CSV misses the offline period");

  // Availability per location.
  await page.goto(base + "/#/availability");
  await page.waitForFunction(() => document.querySelectorAll("#availability tbody tr").length >= 8, null, { timeout: 10000 });
  await page.screenshot({ path: join(shots, "lockers-availability.png"), fullPage: true });

  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  console.log("lockers ui ok");
} finally {
  await browser.close();
}
